"""Each handler with its sample event from events/ (the files `sam local invoke -e` uses)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.lakecheck import lake_keys, read_file
from tests.lambda_context import EVENTS, Context
from totes_ingest.errors import InvalidEvent
from totes_ingest.handlers import aggregate, get_last_ingest_time, query_to_parquet, start_run
from totes_ingest.handlers import commit_table as commit_handler
from totes_ingest.ingest import TablesFailed
from totes_ingest.ingest import lambda_handler as ingest_handler
from totes_ingest.local.dburl import Connect
from totes_ingest.local.seed import seed

pytestmark = pytest.mark.integration


def event(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    return loaded


@pytest.fixture
def seeded(db_secret: dict[str, Any], s3: Any, connect: Connect) -> dict[str, Any]:
    conn = connect(db_secret)
    seed(conn, scale=1)
    conn.close()
    return db_secret


def test_start_run_validates_tables_and_fixes_an_end_time(seeded: dict[str, Any]) -> None:
    result = start_run.lambda_handler(event("start_run"), Context())
    assert sorted(result["tables"]) == sorted(event("start_run")["tables_to_query"])
    assert result["run_id"].startswith("run-")
    assert result["max_concurrency"] >= 1
    assert len(result["end_time"]) == len("2026-11-25 09:30:00.123456")


def test_start_run_rejects_an_unknown_table_by_name(seeded: dict[str, Any]) -> None:
    with pytest.raises(InvalidEvent, match="sales_orders"):
        start_run.lambda_handler({"tables_to_query": ["sales_orders"]}, Context())


def test_get_last_ingest_time_of_an_empty_lake_is_none(seeded: dict[str, Any]) -> None:
    result = get_last_ingest_time.lambda_handler(event("get_last_ingest_time"), Context())
    assert result == {
        **event("get_last_ingest_time"),
        "start_time": None,
        "last_key": None,
        "cursor_start": None,
    }


def test_query_then_write_commits_the_window_under_its_end_time(
    seeded: dict[str, Any], s3: Any
) -> None:
    staged = query_to_parquet.lambda_handler(event("query_to_parquet"), Context())
    assert staged["rows"] > 0
    assert staged["staging_key"] == event("commit_table")["staging_key"]
    written = commit_handler.lambda_handler(staged, Context())
    assert written["status"] == "written"
    assert written["key"] == "sales_order/2026/11/25/093000123456.parquet"
    assert read_file(s3, written["key"]).num_rows == staged["rows"]


def test_write_with_nothing_staged_fails_loudly(seeded: dict[str, Any]) -> None:
    with pytest.raises(Exception, match="vanished"):
        commit_handler.lambda_handler(event("commit_table"), Context())


def test_aggregate_returns_the_written_keys_and_names_failures() -> None:
    result = aggregate.lambda_handler(event("aggregate"), Context())
    assert result["output"] == {"sales_order": "sales_order/2026/11/25/093000123456.parquet"}
    assert result["failed_count"] == 1
    assert result["error"] == "TablesFailed"
    cause = json.loads(result["cause"])
    assert cause["failed"]["staff"].startswith("SourceError: database extract failed")


def test_the_single_function_ingest_returns_the_seed_output(
    seeded: dict[str, Any], s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("END_TIME_SAFETY_MARGIN_SECONDS", "0")
    output = ingest_handler({"tables_to_query": ["currency", "payment_type"]}, Context())
    assert sorted(output) == ["currency", "payment_type"]
    assert [k for k in lake_keys(s3) if k.endswith(".parquet")] == sorted(output.values())
    assert ingest_handler({"tables_to_query": ["currency"]}, Context()) == {}


def test_the_single_function_ingest_names_failed_tables(
    seeded: dict[str, Any], s3: Any, connect: Connect
) -> None:
    conn = connect(seeded)
    conn.run("ALTER TABLE currency ADD COLUMN rate money")
    conn.close()
    with pytest.raises(TablesFailed, match="currency"):
        ingest_handler({"tables_to_query": ["currency", "staff"]}, Context())
    assert any(k.startswith("staff/") for k in lake_keys(s3))
