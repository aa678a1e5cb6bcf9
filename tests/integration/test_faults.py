"""Faults get named errors and leave the watermark where it was."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import BUCKET
from tests.lakecheck import lake_keys
from totes_ingest import pipeline
from totes_ingest.aws import as_lake_error
from totes_ingest.errors import LakeError, LakeUnavailable, SourceError, SourceUnavailable
from totes_ingest.lake import Lake
from totes_ingest.local.dburl import Connect
from totes_ingest.local.seed import seed

pytestmark = pytest.mark.integration


@pytest.fixture
def source(db_secret: dict[str, Any], s3: Any, connect: Connect) -> Any:
    conn = connect(db_secret)
    seed(conn, scale=1)
    yield conn
    conn.close()


def _run_table(conn: Any, lake: Lake, table: str) -> dict[str, Any]:
    """One table through the pipeline's steps, as the state machine runs them."""
    run = pipeline.start_run(
        {"tables_to_query": [table]},
        conn,
        pipeline.RunSettings(fallback_lag_seconds=0, max_concurrency=1, safety_margin_seconds=0),
    )
    item = {"table": table, "end_time": run["end_time"], "run_id": run["run_id"]}
    item = pipeline.find_watermark(item, lake)
    item = pipeline.stage_table(item, conn, lake, row_group_rows=1000)
    return pipeline.commit_table(item, lake) if item["rows"] else item


def _first_window(table: str) -> dict[str, Any]:
    """QueryToParquet's input for a table's first window, ending far in the future."""
    return {
        "table": table,
        "end_time": "2030-01-01 00:00:00.000000",
        "run_id": "run-x",
        "start_time": None,
        "last_key": None,
    }


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}}, "PutObject")


@pytest.mark.parametrize("code", ["SlowDown", "InternalError", "ServiceUnavailable"])
def test_throttling_and_server_errors_are_transient(code: str) -> None:
    error = as_lake_error(_client_error(code), "write of x", table="staff")
    assert isinstance(error, LakeUnavailable)
    assert "table=staff" in str(error)


@pytest.mark.parametrize("code", ["AccessDenied", "NoSuchBucket", "InvalidAccessKeyId"])
def test_refusals_are_permanent_and_named(code: str) -> None:
    error = as_lake_error(_client_error(code), "write of x", table="staff")
    assert type(error) is LakeError
    assert code in str(error)


def test_a_missing_bucket_fails_the_watermark_lookup_by_name(s3: Any) -> None:
    with pytest.raises(LakeError, match="NoSuchBucket"):
        Lake(s3, "no-such-bucket-here").resolve_watermark("staff")


def test_a_table_dropped_mid_run_fails_with_its_name_and_writes_nothing(
    source: Any, s3: Any
) -> None:
    lake = Lake(s3, BUCKET)
    run = pipeline.start_run(
        {"tables_to_query": ["department"]},
        source,
        pipeline.RunSettings(fallback_lag_seconds=0, max_concurrency=1),
    )
    item = pipeline.find_watermark(
        {"table": "department", "end_time": run["end_time"], "run_id": run["run_id"]}, lake
    )
    source.run("DROP TABLE department CASCADE")
    with pytest.raises(SourceError, match="department"):
        pipeline.stage_table(item, source, lake, row_group_rows=1000)
    assert lake_keys(s3) == []


def test_a_dropped_connection_is_transient(
    source: Any, s3: Any, db_secret: dict[str, Any], connect: Connect
) -> None:
    victim = connect(db_secret)
    pid = victim.run("SELECT pg_backend_pid()")[0][0]
    source.run("SELECT pg_terminate_backend(:pid)", pid=pid)
    item = _first_window("staff")
    with pytest.raises(SourceUnavailable):
        pipeline.stage_table(item, victim, Lake(s3, BUCKET), row_group_rows=1000)


def test_a_statement_timeout_is_a_named_error(
    source: Any, s3: Any, db_secret: dict[str, Any], connect: Connect
) -> None:
    # GIVEN another session holding the table locked, and a short statement timeout
    locker = connect(db_secret)
    locker.run("BEGIN")
    locker.run("LOCK TABLE staff IN ACCESS EXCLUSIVE MODE")
    source.run("SET statement_timeout = 200")
    item = _first_window("staff")
    try:
        with pytest.raises((SourceError, SourceUnavailable), match="staff"):
            pipeline.stage_table(item, source, Lake(s3, BUCKET), row_group_rows=1000)
    finally:
        locker.run("ROLLBACK")
        locker.close()


def test_a_column_added_between_runs_is_carried_and_logged(
    source: Any, s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    lake = Lake(s3, BUCKET)
    first = _run_table(source, lake, "currency")
    source.run("ALTER TABLE currency ADD COLUMN currency_name varchar")
    source.run(
        "UPDATE currency SET currency_name = 'Pound', last_updated = now() "
        "WHERE currency_code = 'GBP'"
    )
    with caplog.at_level(logging.WARNING, logger="totes-ingest"):
        second = _run_table(source, lake, "currency")
    assert second["key"] > first["key"]
    changes = [
        r for r in caplog.records if r.getMessage() == "Schema changed since the previous file"
    ]
    assert len(changes) == 1
    assert changes[0].__dict__["added"] == ["currency_name string"]
    assert changes[0].__dict__["removed"] == []
