"""docs/deploy.md documents what the template and the repository actually have."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = (ROOT / "docs" / "deploy.md").read_text()


def test_every_template_parameter_has_a_row_in_the_parameters_table(
    template: dict[str, Any],
) -> None:
    documented = set(re.findall(r"^\| `(\w+)` \|", DEPLOY, flags=re.MULTILINE))

    assert set(template["Parameters"]) - documented == set()


def test_every_documented_parameter_default_is_the_templates(template: dict[str, Any]) -> None:
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", DEPLOY, flags=re.MULTILINE)

    mismatched = {
        name: (default, template["Parameters"][name].get("Default"))
        for name, default in rows
        if name in template["Parameters"]
        and default != str(template["Parameters"][name].get("Default"))
    }

    assert mismatched == {}


def test_every_sample_event_the_guide_invokes_exists() -> None:
    events = set(re.findall(r"events/[\w.]+\.json", DEPLOY))

    assert events
    assert {e for e in events if not (ROOT / e).is_file()} == set()


def test_every_function_the_guide_invokes_is_in_the_template(template: dict[str, Any]) -> None:
    invoked = set(re.findall(r"sam local invoke (\w+)", DEPLOY))

    assert invoked == {
        n for n, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"
    }
