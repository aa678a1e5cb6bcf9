"""AuditSummary: the audit's verdict from the Map's per-table results."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.lambda_context import EVENTS, Context
from totes_ingest.audit_summary import summarize
from totes_ingest.errors import InvalidEvent
from totes_ingest.handlers import audit_summary

pytestmark = pytest.mark.unit


def _whole(table: str, **counts: int) -> dict[str, Any]:
    found = dict.fromkeys(("missing", "repaired", "newer_in_lake", "deleted", "tombstoned"), 0)
    return {"table": table, "status": "whole", **found, **counts}


def test_a_whole_lake_is_whole_with_no_error() -> None:
    verdict = summarize([_whole("currency"), _whole("staff", deleted=1, tombstoned=1)])
    assert verdict["whole"] is True
    assert (verdict["error"], verdict["cause"], verdict["failed_count"]) == (None, None, 0)
    assert verdict["totals"]["tombstoned"] == 1


def test_missing_versions_make_the_lake_not_whole_even_when_repaired() -> None:
    repaired = {**_whole("sales_order", missing=3, repaired=3), "status": "repaired"}
    verdict = summarize([repaired, _whole("currency")])
    assert verdict["whole"] is False
    assert verdict["error"] == "LakeNotWhole"
    cause = json.loads(verdict["cause"])
    assert cause["missing"] == {"sales_order": 3}
    assert cause["totals"]["repaired"] == 3


def test_a_key_newer_in_the_lake_makes_it_not_whole() -> None:
    newer = {**_whole("staff", newer_in_lake=2), "status": "not whole"}
    verdict = summarize([newer])
    assert verdict["error"] == "LakeNotWhole"
    assert json.loads(verdict["cause"])["newer_in_lake"] == {"staff": 2}


def test_unrepaired_deletes_of_a_report_only_audit_make_it_not_whole() -> None:
    verdict = summarize([{**_whole("staff", deleted=1), "status": "not whole"}])
    assert verdict["error"] == "LakeNotWhole"
    assert json.loads(verdict["cause"])["not_whole"] == ["staff"]


def test_the_sample_event_names_the_failed_table_and_why() -> None:
    sample = json.loads((EVENTS / "audit_summary.json").read_text())
    verdict = audit_summary.lambda_handler(sample, Context())  # type: ignore[arg-type]
    assert verdict["whole"] is False
    assert verdict["error"] == "AuditTablesFailed"
    assert verdict["failed_count"] == 1
    cause = json.loads(verdict["cause"])
    assert cause["failed"]["staff"].startswith("AuditLeaseHeld: another audit holds the lease")
    assert cause["missing"] == {"sales_order": 3}
    assert verdict["tables"] == {"sales_order": "repaired", "currency": "whole", "staff": "failed"}


def _emf(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]


def test_the_summary_publishes_failed_and_not_whole_table_counts_and_logs_critical(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    sample = json.loads((EVENTS / "audit_summary.json").read_text())
    audit_summary.lambda_handler(sample, Context())  # type: ignore[arg-type]

    out = capsys.readouterr().out
    (document,) = [d for d in _emf(out) if "AuditTablesFailed" in d]
    assert (document["AuditTablesFailed"], document["AuditTablesNotWhole"]) == ([1.0], [0.0])
    assert document["step"] == "AuditSummary"
    critical = [r.getMessage() for r in caplog.records if r.levelname == "CRITICAL"]
    assert critical == ["Audit failed for some tables"]


def test_a_whole_lake_is_logged_at_info_only(caplog: pytest.LogCaptureFixture) -> None:
    audit_summary.lambda_handler({"results": [_whole("currency")]}, Context())  # type: ignore[arg-type]

    assert {r.levelname for r in caplog.records} == {"INFO"}


def test_the_summary_without_results_is_an_invalid_event() -> None:
    with pytest.raises(InvalidEvent, match="results"):
        audit_summary.lambda_handler({"tables": []}, Context())  # type: ignore[arg-type]
