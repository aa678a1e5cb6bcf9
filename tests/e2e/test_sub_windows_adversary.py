"""Sub-windows against an adversary, through the real state machine (moto runs the ASL,
the Distributed Map included): overlapping executions planning the same tables, a
StageWindow child that fails, CommitWindows dying between two sub-window commits."""

from __future__ import annotations

from typing import Any

import pytest

from tests.lakecheck import duplicated_versions, lake_keys, mismatches, table_files
from totes_ingest import config, pipeline
from totes_ingest.errors import LakeUnavailable
from totes_ingest.lake import Lake
from totes_ingest.local.runner import LocalDeployment
from totes_ingest.local.seed import seed
from totes_ingest.sub_windows import PLAN_INDEX

pytestmark = pytest.mark.e2e

TIMEOUT_S = 300
BUSY = ["sales_order", "payment", "transaction"]  # 10,000 and 14,000 rows at scale 1


@pytest.fixture(autouse=True)
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("END_TIME_SAFETY_MARGIN_SECONDS", "0")
    monkeypatch.setenv(config.MAX_WINDOW_ROWS, "2000")


def assert_exactly_once(conn: Any, s3: Any) -> None:
    for table in BUSY:
        assert mismatches(conn, s3, table) == []
        assert duplicated_versions(s3, table) == []


def test_overlapping_executions_planning_the_same_tables_land_every_row_once(
    db_secret: dict[str, Any], s3: Any, connect: Any
) -> None:
    conn = connect(db_secret)
    seed(conn, scale=1)
    event = {"tables_to_query": BUSY}
    with LocalDeployment() as machine:
        # WHEN three executions plan and stage the same windows at once
        results = machine.run_together([event] * 3, delays_s=[0, 0.2, 0.4], timeout_s=TIMEOUT_S)
        assert all(r.status in ("SUCCEEDED", "FAILED") for r in results)
        # ... then one more catches up
        last = machine.run(event, timeout_s=TIMEOUT_S)
    assert last.succeeded, last.describe()
    # THEN every row is there once, in an unbroken chain of windows
    assert_exactly_once(conn, s3)
    for table in BUSY:
        assert len(table_files(s3, table)) >= 5


def test_a_failed_stage_window_child_fails_the_table_and_the_next_run_resumes(
    db_secret: dict[str, Any], s3: Any, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connect(db_secret)
    seed(conn, scale=1)
    original = pipeline.stage_table
    failed: list[int] = []

    def third_fails(payload: Any, *args: Any, **kwargs: Any) -> Any:
        if payload.get(PLAN_INDEX) == 2 and not failed:
            failed.append(2)
            raise RuntimeError("chaos: the third sub-window's staging died")
        return original(payload, *args, **kwargs)

    monkeypatch.setattr(pipeline, "stage_table", third_fails)
    event = {"tables_to_query": ["payment"]}
    with LocalDeployment() as machine:
        first = machine.run(event, timeout_s=TIMEOUT_S)
        # the map tolerates it; CommitWindows commits two and stops at the third
        assert first.status in ("SUCCEEDED", "FAILED"), first.describe()
        assert failed == [2]
        assert len(table_files(s3, "payment")) == 2
        second = machine.run(event, timeout_s=TIMEOUT_S)
    assert second.succeeded, second.describe()
    assert second.output["payment"] == table_files(s3, "payment")[-1]
    assert mismatches(conn, s3, "payment") == []
    assert duplicated_versions(s3, "payment") == []


def test_commit_windows_dying_between_two_commits_is_retried_and_goes_on(
    db_secret: dict[str, Any], s3: Any, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connect(db_secret)
    seed(conn, scale=1)
    original = Lake.commit
    calls: list[int] = []

    def dies_after_the_second(self: Lake, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise LakeUnavailable("chaos: CommitWindows died after its second commit")
        return result

    monkeypatch.setattr(Lake, "commit", dies_after_the_second)
    with LocalDeployment() as machine:
        result = machine.run({"tables_to_query": ["payment"]}, timeout_s=TIMEOUT_S)
    # THEN the state machine's retry went on from there: the table is whole, in one run
    assert result.succeeded, result.describe()
    files = table_files(s3, "payment")
    assert result.output["payment"] == files[-1]
    assert len(files) >= 7
    assert mismatches(conn, s3, "payment") == []
    assert duplicated_versions(s3, "payment") == []
    assert [k for k in lake_keys(s3, "_staging/payment/") if k.endswith(".parquet")] == []
