"""The real audit state machine (statemachine/audit.asl.json, wired as template.yaml
wires it), executed by moto with the real handlers against a real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import BUCKET
from tests.lakecheck import duplicated_versions, lake_keys, mismatches, read_table, repair_files
from totes_ingest.audit_lease import acquire
from totes_ingest.lake import Lake
from totes_ingest.local.dburl import Connect
from totes_ingest.local.runner import ExecutionResult, Stack, load_stack, run_state_machine
from totes_ingest.local.seed import seed

pytestmark = pytest.mark.e2e

TIMEOUT_S = 180
TABLES = ["currency", "department", "staff"]


@pytest.fixture(autouse=True)
def no_safety_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """No writer runs beside these tests, so a run may read right up to the clock."""
    monkeypatch.setenv("END_TIME_SAFETY_MARGIN_SECONDS", "0")


@pytest.fixture(scope="module")
def audit_stack() -> Stack:
    return load_stack(state_machine_id="AuditStateMachine")


@pytest.fixture
def ingested(db_secret: dict[str, Any], s3: Any, connect: Connect) -> Iterator[Any]:
    """A seeded ToteSys database whose TABLES the ingest state machine has committed."""
    conn = connect(db_secret)
    seed(conn, scale=1)
    result = run_state_machine({"tables_to_query": TABLES}, timeout_s=TIMEOUT_S)
    assert result.succeeded, result.describe()
    yield conn
    conn.close()


def audit(stack: Stack, tables: list[str] = TABLES) -> ExecutionResult:
    return run_state_machine({"tables_to_query": tables}, timeout_s=TIMEOUT_S, stack=stack)


def lose_a_currency_version(conn: Any) -> int:
    """A row whose last_updated lies an hour below the watermark: no window reads it."""
    ((key,),) = conn.run(
        "INSERT INTO currency (currency_code, last_updated) "
        "VALUES ('JPY', now() - interval '1 hour') RETURNING currency_id"
    )
    return int(key)


def versions_of(s3: Any, key: int) -> int:
    return sum(1 for row in read_table(s3, "currency") if row["currency_id"] == key)


def test_an_audit_of_a_whole_lake_succeeds_and_writes_nothing(
    ingested: Any, s3: Any, audit_stack: Stack
) -> None:
    before = lake_keys(s3)
    result = audit(audit_stack)
    assert result.succeeded, result.describe()
    assert result.output["whole"] is True
    assert result.output["tables"] == dict.fromkeys(TABLES, "whole")
    assert result.output["totals"]["missing"] == 0
    assert lake_keys(s3) == before


def test_a_version_behind_the_watermark_is_repaired_exactly_once_and_a_second_run_writes_nothing(
    ingested: Any, s3: Any, audit_stack: Stack
) -> None:
    # GIVEN a version the pipeline lost: below the watermark, in no file
    lost = lose_a_currency_version(ingested)
    assert versions_of(s3, lost) == 0
    # WHEN the audit runs
    first = audit(audit_stack)
    # THEN it fails, saying what was missing, having repaired it exactly once
    assert first.status == "FAILED", first.describe()
    assert first.error == "LakeNotWhole"
    cause = json.loads(first.cause or "{}")
    assert cause["missing"] == {"currency": 1}
    assert cause["totals"]["repaired"] == 1
    assert cause["failed"] == {}
    assert versions_of(s3, lost) == 1
    assert len(repair_files(s3, "currency")) == 1
    assert mismatches(ingested, s3, "currency") == []
    assert not [k for k in lake_keys(s3) if k.startswith("_audit/")]  # leases released
    # ... and a second audit finds the lake whole and writes nothing
    before = lake_keys(s3)
    second = audit(audit_stack)
    assert second.succeeded, second.describe()
    assert second.output["whole"] is True
    assert second.output["totals"]["repaired"] == 0
    assert lake_keys(s3) == before
    # ... nor does the next ingest run write the repaired version again
    assert run_state_machine({"tables_to_query": ["currency"]}, timeout_s=TIMEOUT_S).succeeded
    assert versions_of(s3, lost) == 1
    assert duplicated_versions(s3, "currency") == []


def test_a_table_whose_lease_is_held_fails_alone_and_the_others_are_audited(
    ingested: Any, s3: Any, audit_stack: Stack
) -> None:
    # GIVEN another audit of staff still running, and a version lost from currency
    acquire(Lake(s3, BUCKET), "staff", "audit-other", ttl=timedelta(minutes=16))
    lost = lose_a_currency_version(ingested)
    # WHEN the audit runs over all three
    result = audit(audit_stack)
    # THEN staff fails, named with why, and currency was still audited and repaired
    assert result.status == "FAILED", result.describe()
    assert result.error == "AuditTablesFailed"
    cause = json.loads(result.cause or "{}")
    assert set(cause["failed"]) == {"staff"}
    assert cause["failed"]["staff"].startswith("AuditLeaseHeld: another audit holds the lease")
    assert cause["missing"] == {"currency": 1}
    assert versions_of(s3, lost) == 1
    assert lake_keys(s3, "_audit/") == ["_audit/staff/lease"]  # the other audit's, untouched


def test_an_unknown_table_fails_the_audit_before_any_table_is_audited(
    ingested: Any, s3: Any, audit_stack: Stack
) -> None:
    before = lake_keys(s3)
    result = audit(audit_stack, ["currency", "currencies"])
    assert result.status == "FAILED"
    assert result.error == "InvalidEvent"
    assert "currencies" in (result.cause or "")
    assert lake_keys(s3) == before
