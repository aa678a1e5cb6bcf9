"""The security scanners and the ASL validator find nothing.

checkov runs from its own venv (.venv-checkov) on the template as written and as the SAM
transform deploys it; every check it skips is skipped in the template, with a reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[2]
DEPLOYED_ARNS = {
    name: f"arn:aws:lambda:eu-west-2:123456789012:function:totes-ingest-{name[:-3]}-AbC123"
    for name in [
        "StartRunFunctionArn",
        "GetLastIngestTimeFunctionArn",
        "QueryToParquetFunctionArn",
        "CommitTableFunctionArn",
        "AggregateFunctionArn",
        "AuditTableFunctionArn",
        "AuditSummaryFunctionArn",
    ]
}
DEFINITIONS = ["statemachine/ingest.asl.json", "statemachine/audit.asl.json"]


@pytest.fixture(scope="module")
def asl_validator_bin(node_modules: Path) -> Path:
    return node_modules / ".bin" / "asl-validator"


@pytest.fixture(scope="module")
def checkov_reports(checkov_bin: Path, transformed_path: Path) -> dict[str, dict[str, Any]]:
    """checkov's JSON report per file: the template, and its SAM transform."""
    reports = {}
    # Offline: no download of the platform's guideline mapping or of new checks.
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    for name, path in {"template": ROOT / "template.yaml", "transformed": transformed_path}.items():
        run = subprocess.run(
            [
                str(checkov_bin),
                "--file",
                str(path),
                "--framework",
                "cloudformation",
                "--skip-download",
                "--output",
                "json",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            check=False,
        )
        assert run.returncode in (0, 1), run.stderr
        reports[name] = json.loads(run.stdout)
    counts = {
        name: {k: report["summary"][k] for k in ("passed", "failed", "skipped")}
        for name, report in reports.items()
    }
    print(f"checkov: {counts}")
    return reports


def failures(report: dict[str, Any]) -> list[str]:
    return [
        f"{c['check_id']} {c['resource']}: {c['check_name']}"
        for c in report["results"]["failed_checks"]
    ]


def test_checkov_finds_no_failed_check_in_the_template(
    checkov_reports: dict[str, dict[str, Any]],
) -> None:
    report = checkov_reports["template"]

    assert failures(report) == []
    assert report["summary"]["passed"] > 0


def test_checkov_finds_no_failed_check_in_the_transformed_template(
    checkov_reports: dict[str, dict[str, Any]],
) -> None:
    report = checkov_reports["transformed"]

    assert failures(report) == []
    assert report["summary"]["parsing_errors"] == 0


def test_every_skipped_check_gives_its_reason_in_the_template(
    checkov_reports: dict[str, dict[str, Any]],
) -> None:
    skipped = checkov_reports["template"]["results"]["skipped_checks"]

    unexplained = [
        f"{c['check_id']} {c['resource']}"
        for c in skipped
        if len(c["check_result"].get("suppress_comment") or "") < 20
    ]

    assert unexplained == []


def validate_asl(validator: Path, path: str) -> subprocess.CompletedProcess[str]:
    """Run asl-validator on the definition at ``path``."""
    return subprocess.run(
        [str(validator), "--json-path", path],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_asl_validator_accepts_the_definition_file(
    asl_validator_bin: Path, definition: str
) -> None:
    run = validate_asl(asl_validator_bin, definition)

    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_asl_validator_accepts_the_definition_as_deployed(
    asl_validator_bin: Path, definition: str, tmp_path: Path
) -> None:
    deployed = (ROOT / definition).read_text()
    for name, arn in DEPLOYED_ARNS.items():
        deployed = deployed.replace("${" + name + "}", arn)
    path = tmp_path / "deployed.asl.json"
    path.write_text(deployed)

    run = validate_asl(asl_validator_bin, str(path))

    assert "${" not in deployed
    assert run.returncode == 0, run.stdout + run.stderr


def test_asl_validator_rejects_a_broken_definition(
    asl_validator_bin: Path, asl: dict[str, Any], tmp_path: Path
) -> None:
    broken = {**asl, "StartAt": "NoSuchState"}
    path = tmp_path / "broken.asl.json"
    path.write_text(json.dumps(broken))

    run = validate_asl(asl_validator_bin, str(path))

    assert run.returncode != 0


def test_bandit_finds_no_medium_or_high_severity_issue_in_functions() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bandit", "-r", "functions/", "-ll", "--format", "json", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    report = json.loads(run.stdout)

    issues = [
        f"{i['filename']}:{i['line_number']} {i['test_id']} {i['issue_text']}"
        for i in report["results"]
    ]

    assert issues == []
    assert report["metrics"]["_totals"]["loc"] > 0
