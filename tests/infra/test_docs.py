"""docs/deploy.md and the README document what the template and the repository have."""

from __future__ import annotations

import os
import re
import subprocess
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


README = (ROOT / "README.md").read_text()


def test_every_make_target_the_docs_name_is_in_the_makefile() -> None:
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", README + DEPLOY))

    unknown = {
        target
        for target in named
        if subprocess.run(
            ["make", "--dry-run", target, "ARTIFACTS_DIR=/nowhere"],
            capture_output=True,
            cwd=ROOT,
            check=False,
        ).returncode
        != 0
    }

    assert named
    assert unknown == set()


def test_every_sam_command_the_docs_run_exists_with_its_options(sam_cli: Path) -> None:
    runs = re.findall(
        r"^\s*(?:\S+\s*\|\s*)?sam ((?:local )?[a-z]+)([^#\n]*)", README + DEPLOY, re.M
    )
    commands: dict[str, set[str]] = {}
    for command, rest in runs:
        commands.setdefault(command, set()).update(re.findall(r"(--[a-z-]+)", rest))

    for command, options in sorted(commands.items()):
        run = subprocess.run(
            [str(sam_cli), *command.split(), "--help"],
            capture_output=True,
            text=True,
            env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
            check=False,
        )
        assert run.returncode == 0, f"sam {command}: {run.stderr}"
        assert {o for o in options if o not in run.stdout} == set(), f"sam {command}"
    assert {"build", "deploy", "validate", "local invoke"} <= set(commands)
