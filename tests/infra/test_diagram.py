"""docs/architecture.md is the picture the deployed definition draws, and it parses."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "architecture.md"


@pytest.fixture(scope="module")
def diagram() -> ModuleType:
    """statemachine/diagram.py, a script, loaded as a module."""
    spec = importlib.util.spec_from_file_location("diagram", ROOT / "statemachine" / "diagram.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_state_names(machine: dict[str, Any]) -> set[str]:
    names = set(machine["States"])
    for state in machine["States"].values():
        inner = state.get("ItemProcessor") or state.get("Iterator")
        for branch in [inner] if inner else state.get("Branches", []):
            names |= all_state_names(branch)
    return names


def test_the_checked_in_architecture_is_what_the_definition_draws(
    diagram: ModuleType, asl: dict[str, Any]
) -> None:
    assert DOCUMENT.read_text() == diagram.render(asl), "run `make diagram`"


def test_the_readme_shows_the_same_flowchart(diagram: ModuleType, asl: dict[str, Any]) -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme == diagram.readme_with_diagram(readme, asl), "run `make diagram`"
    assert diagram.mermaid(asl) in DOCUMENT.read_text()


def test_the_diagram_shows_every_state_including_the_maps_inner_states(
    diagram: ModuleType, asl: dict[str, Any]
) -> None:
    document = diagram.render(asl)

    for name in all_state_names(asl):
        assert f"{diagram.node_id(name)}" in document
    assert "subgraph s_IngestTables" in document


def test_the_diagram_shows_each_catch_as_a_dotted_arrow(
    diagram: ModuleType, asl: dict[str, Any]
) -> None:
    document = diagram.render(asl)

    for task in ("GetLastIngestTime", "QueryToParquet", "CommitTable"):
        assert f'{diagram.node_id(task)} -. "any error" .-> s_TableFailed' in document


@pytest.mark.usefixtures("node_modules")
def test_the_architecture_diagram_parses_as_mermaid() -> None:
    run = subprocess.run(
        ["node", "tests/infra/mermaid_parse.mjs", str(DOCUMENT)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    assert "flowchart" in run.stdout


def test_the_check_mode_passes_on_the_checked_in_document() -> None:
    run = subprocess.run(
        [sys.executable, "statemachine/diagram.py", "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )

    assert run.returncode == 0, run.stdout
