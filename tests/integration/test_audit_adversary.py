"""Adversarial tests of the audit and the lake's views: what a real database, operator or
fault does to the audit's promises. A test marked xfail(strict) is a promise broken today
(its reason names why); an unmarked one is a promise that held."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tests.conftest import BUCKET
from tests.lakecheck import read_table
from totes_ingest import audit, pipeline
from totes_ingest.lake import Lake

pytestmark = pytest.mark.integration

SETTINGS = pipeline.RunSettings(fallback_lag_seconds=0, max_concurrency=1, safety_margin_seconds=0)
AUDIT = audit.AuditSettings(partition_keys=4)


def _run(conn: Any, lake: Lake, table: str) -> dict[str, Any]:
    """One table through StartRun, GetLastIngestTime, QueryToParquet and CommitTable."""
    run = pipeline.start_run({"tables_to_query": [table]}, conn, SETTINGS)
    item = {
        "table": table,
        **{k: run[k] for k in ("end_time", "run_id", "source_timezone", "hold")},
    }
    item = pipeline.find_watermark(item, lake)
    item = pipeline.stage_table(item, conn, lake, row_group_rows=1000, reread_lag_seconds=300)
    return pipeline.commit_table(item, lake) if item["rows"] else item


def _audit(
    conn: Any, lake: Lake, table: str, settings: audit.AuditSettings = AUDIT
) -> audit.TableAudit:
    return audit.audit_table(conn, lake, table, settings, audit_id="adversary")


def _objects(s3: Any) -> dict[str, str]:
    listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {item["Key"]: item["ETag"] for item in listed}


def _utc(conn: Any, db_settings: dict[str, Any]) -> None:
    conn.run(f"ALTER DATABASE \"{db_settings['database']}\" SET timezone = 'UTC'")
    conn.run("SET TimeZone = 'UTC'")


def _assert_whole_and_silent(conn: Any, lake: Lake, s3: Any, table: str) -> None:
    """An audit over a lake the pipeline just wrote finds nothing and writes nothing."""
    before = _objects(s3)
    found = _audit(conn, lake, table)
    assert (found.missing, found.repaired, found.deleted, found.newer_in_lake) == (0, 0, 0, 0), (
        found.examples
    )
    assert found.status == "whole"
    assert _objects(s3) == before


# --- key shapes ---------------------------------------------------------------------------

# (column type, three distinct key values as SQL literals): each a key whose lake text and
# PostgreSQL text must agree for the audit to match a lake version with its source row.
KEY_SHAPES = [
    ("text", ["'plain'", "'a \"quoted\", comma'", "E'new\\nline, \\\\ back'"]),
    ("varchar(20)", ["''", "' lead'", "'trail '"]),
    ("int8", ["-9223372036854775807", "0", "9223372036854775807"]),
    ("numeric(12,2)", ["-1.50", "0", "12.30"]),
    ("date", ["'2026-01-01'", "'1999-12-31'", "'0001-01-01'"]),
    ("uuid", ["gen_random_uuid()", "gen_random_uuid()", "gen_random_uuid()"]),
    ("float8", ["0.1", "1e20", "-2.5"]),
    ("char(5)", ["'ab'", "'abcde'", "'x'"]),
    ("timestamp", ["'2026-01-01 00:00:00'", "'2026-01-01 00:00:00.5'", "'2026-01-01 12:00:01'"]),
    ("timestamptz", ["'2026-01-01 00:00:00+00'", "'2026-01-01 00:00:00.25+00'", "now()"]),
    ("boolean", ["true", "false", "NULL"]),
]
_BROKEN_KEYS = {
    "char(5)": "a char(n) key keeps its padding in the lake ('ab   ') but bpchar::text strips it",
    "timestamp": "Arrow's text of a timestamp key has 6 fraction digits, PostgreSQL's none",
    "timestamptz": "Arrow's text of a timestamptz key ends in 'Z', PostgreSQL's in '+00'",
}


def _key_shape_params() -> list[Any]:
    params = []
    for sql_type, values in KEY_SHAPES:
        marks = []
        if sql_type in _BROKEN_KEYS:
            marks.append(pytest.mark.xfail(strict=True, reason=_BROKEN_KEYS[sql_type]))
        params.append(pytest.param(sql_type, values, id=sql_type, marks=marks))
    return params


@pytest.mark.parametrize(("sql_type", "values"), _key_shape_params())
def test_a_whole_lake_with_a_composite_key_of_this_type_is_whole_and_written_once(
    conn: Any, db_settings: dict[str, Any], s3: Any, sql_type: str, values: list[str]
) -> None:
    # GIVEN rows keyed by (n, k) with k of this type, ingested with versions an hour old
    # (inside the judged range) and then audited twice
    _utc(conn, db_settings)
    nullable = "NULL" in values
    conn.run(
        f"CREATE TABLE shaped (n int NOT NULL, k {sql_type} {'' if nullable else 'NOT NULL'}, "
        "v int, last_updated timestamp NOT NULL DEFAULT now() - interval '1 hour'"
        + (", UNIQUE (n, k))" if nullable else ", PRIMARY KEY (n, k))")
    )
    if nullable:  # a boolean key: a NOT NULL unique index instead
        conn.run("ALTER TABLE shaped ALTER COLUMN k SET NOT NULL")
        values = [v for v in values if v != "NULL"]
    for i, value in enumerate(values):
        conn.run(f"INSERT INTO shaped (n, k, v) VALUES (1, {value}, {i})")
    lake = Lake(s3, BUCKET)
    _run(conn, lake, "shaped")
    # THEN the audit finds nothing and writes nothing, twice
    _assert_whole_and_silent(conn, lake, s3, "shaped")
    _assert_whole_and_silent(conn, lake, s3, "shaped")
    versions = Counter((r["n"], str(r["k"]), r["last_updated"]) for r in read_table(s3, "shaped"))
    assert sorted(versions.values()) == [1] * len(values)
