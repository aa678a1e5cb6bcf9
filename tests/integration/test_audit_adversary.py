"""Adversarial tests of the audit and the lake's views: what a real database, operator or
fault does to the audit's promises. A test marked xfail(strict) is a promise broken today
(its reason names why); an unmarked one is a promise that held."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pg8000.native
import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq
import pytest

from tests.command import database_url, totes_ingest
from tests.conftest import BUCKET
from tests.lakecheck import lake_keys, read_file, read_table, table_files
from totes_ingest import audit, pipeline
from totes_ingest.format_time import parse_time
from totes_ingest.lake import Lake
from totes_ingest.lake_views import TableColumns, duckdb_statements

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
    ("varchar", ["E'cr\\rlf\\r\\n'", "'é€😀'", "E'\\t\"\"'"]),
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
    ("int2", ["-32768", "0", "32767"]),
    ("numeric", ["1.0", "2.50", "-3"]),
    ("bytea", ["'\\x00ff'::bytea", "'abc'::bytea", "'\\xdeadbeef'::bytea"]),
    ("time", ["'00:00:00'", "'12:30:00.5'", "'23:59:59.999999'"]),
    ("interval", ["'1 day'", "'1 mon 2 days 03:00:00'", "'-1 year'"]),
    ("inet", ["'10.0.0.1'", "'10.0.0.0/8'", "'::1'"]),
    ("timestamp(0)", ["'2026-01-01 00:00:00'", "'2026-01-01 00:00:01'", "'2026-06-01 12:00:00'"]),
]
_BROKEN_KEYS: dict[str, str] = {}  # every key shape above is audited exactly


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


@pytest.mark.parametrize(("sql_type", "values"), _key_shape_params())
def test_a_deleted_key_of_this_type_gets_one_tombstone_with_its_own_value(
    conn: Any, db_settings: dict[str, Any], s3: Any, sql_type: str, values: list[str]
) -> None:
    # GIVEN rows keyed by (n, k), ingested, then one deleted at the source
    _utc(conn, db_settings)
    conn.run(
        f"CREATE TABLE shaped (n int NOT NULL, k {sql_type} NOT NULL, v int, "
        "last_updated timestamp NOT NULL DEFAULT now() - interval '1 hour', UNIQUE (n, k))"
    )
    values = [v for v in values if v != "NULL"]
    for i, value in enumerate(values):
        conn.run(f"INSERT INTO shaped (n, k, v) VALUES (1, {value}, {i})")
    lake = Lake(s3, BUCKET)
    _run(conn, lake, "shaped")
    conn.run("DELETE FROM shaped WHERE v = 1")
    # WHEN audited THEN that key, and only it, is tombstoned, once
    found = _audit(conn, lake, "shaped")
    assert (found.missing, found.deleted, found.tombstoned) == (0, 1, 1), found.examples
    assert found.tombstone_key is not None
    stone = pq.read_table(
        io.BytesIO(s3.get_object(Bucket=BUCKET, Key=found.tombstone_key)["Body"].read())
    )
    deleted = [r["k"] for r in read_table(s3, "shaped") if r["v"] == 1]
    assert stone.column("k").to_pylist() == deleted
    _assert_whole_and_silent(conn, lake, s3, "shaped")


# --- tombstones and the current view --------------------------------------------------------

ITEM_COLUMNS = TableColumns(
    "item", (("id", "bigint"), ("v", "string"), ("last_updated", "timestamp")), ("id",)
)


def _item(conn: Any, db_settings: dict[str, Any], *, cursor_null: bool = False) -> None:
    _utc(conn, db_settings)
    conn.run(
        "CREATE TABLE item (id int8 PRIMARY KEY, v text, last_updated timestamp "
        + ("" if cursor_null else "NOT NULL ")
        + "DEFAULT now() - interval '1 hour')"
    )


def _current_ids(s3: Any, folder: Path, columns: TableColumns = ITEM_COLUMNS) -> list[Any]:
    """The keys ``<table>_current`` shows, DuckDB over a copy of the bucket."""
    if folder.exists():
        shutil.rmtree(folder)
    for key in lake_keys(s3):
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    tombstones = any(folder.glob(f"_tombstones/{columns.table}/*/*/*/*.parquet"))
    con = duckdb.connect()
    for statement in duckdb_statements(str(folder), columns, tombstones):
        con.execute(statement)
    key = columns.key[0]
    rows = con.execute(f'SELECT "{key}" FROM "{columns.table}_current" ORDER BY "{key}"').fetchall()
    return [row[0] for row in rows]


def _ids(conn: Any) -> list[int]:
    return [row[0] for row in conn.run("SELECT id FROM item ORDER BY id")]


def test_a_deleted_key_is_hidden_and_a_later_reinsert_shows_again(
    conn: Any, db_settings: dict[str, Any], s3: Any, tmp_path: Path
) -> None:
    _item(conn, db_settings)
    lake = Lake(s3, BUCKET)
    conn.run("INSERT INTO item (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    _run(conn, lake, "item")
    conn.run("DELETE FROM item WHERE id = 2")
    assert _audit(conn, lake, "item").tombstoned == 1
    assert _current_ids(s3, tmp_path / "l1") == [1, 3]
    conn.run("INSERT INTO item (id, v, last_updated) VALUES (2, 'back', now())")
    _run(conn, lake, "item")
    assert _current_ids(s3, tmp_path / "l2") == [1, 2, 3] == _ids(conn)
    # ... deleted a second time: a second tombstone, hidden again
    conn.run("DELETE FROM item WHERE id = 2")
    assert _audit(conn, lake, "item", audit.AuditSettings(horizon_days=None)).tombstoned == 1
    assert _current_ids(s3, tmp_path / "l3") == [1, 3] == _ids(conn)


def test_a_table_emptied_completely_is_tombstoned_once_and_its_current_view_is_empty(
    conn: Any, db_settings: dict[str, Any], s3: Any, tmp_path: Path
) -> None:
    _item(conn, db_settings)
    lake = Lake(s3, BUCKET)
    conn.run("INSERT INTO item (id, v) SELECT g, 'x' FROM generate_series(-5, 12) AS g")
    _run(conn, lake, "item")
    conn.run("DELETE FROM item")
    found = _audit(conn, lake, "item")
    assert (found.deleted, found.tombstoned, found.status) == (18, 18, "repaired")
    assert _current_ids(s3, tmp_path / "l") == []
    _assert_whole_and_silent(conn, lake, s3, "item")


def _ingested_then_tombstoned(conn: Any, db_settings: dict[str, Any], s3: Any) -> Lake:
    """Keys 1 and 2 ingested, a backup of them taken, key 2 deleted and tombstoned."""
    _item(conn, db_settings)
    lake = Lake(s3, BUCKET)
    conn.run("INSERT INTO item (id, v) VALUES (1, 'a'), (2, 'b')")
    _run(conn, lake, "item")
    conn.run("CREATE TABLE item_backup AS SELECT * FROM item")
    conn.run("DELETE FROM item WHERE id = 2")
    assert _audit(conn, lake, "item").tombstoned == 1
    return lake


def test_a_row_restored_from_a_backup_with_its_own_last_updated_is_current_again(
    conn: Any, db_settings: dict[str, Any], s3: Any, tmp_path: Path
) -> None:
    # GIVEN a row ingested, deleted by mistake and tombstoned by the audit
    lake = _ingested_then_tombstoned(conn, db_settings, s3)
    assert _current_ids(s3, tmp_path / "l") == [1]
    # WHEN the operator restores it from the backup, as it was (its own last_updated)
    conn.run("INSERT INTO item SELECT * FROM item_backup WHERE id = 2")
    _run(conn, lake, "item")  # (nothing to write: the lake holds that version)
    # THEN the next audit finds it hidden and lifts its tombstone, writing nothing else
    found = _audit(conn, lake, "item")
    assert (found.revived, found.tombstoned, found.missing, found.deleted) == (1, 0, 0, 0)
    assert (found.status, found.examples["revived"]) == ("repaired", ["id=2"])
    assert _current_ids(s3, tmp_path / "l") == [1, 2] == _ids(conn)
    _assert_whole_and_silent(conn, lake, s3, "item")
    # and deleted again, it is tombstoned again and hidden again
    conn.run("DELETE FROM item WHERE id = 2")
    assert _audit(conn, lake, "item").tombstoned == 1
    assert _current_ids(s3, tmp_path / "l") == [1] == _ids(conn)
    _assert_whole_and_silent(conn, lake, s3, "item")


def test_a_tombstoned_key_inserted_again_is_not_revived_before_its_new_version_lands(
    conn: Any, db_settings: dict[str, Any], s3: Any, tmp_path: Path
) -> None:
    # GIVEN a key ingested, deleted and tombstoned, then inserted again (a new version)
    lake = _ingested_then_tombstoned(conn, db_settings, s3)
    conn.run("INSERT INTO item (id, v) VALUES (2, 'new')")
    # WHEN audited before the new version is ingested
    found = _audit(conn, lake, "item")
    # THEN no marker lifts the old version's tombstone: the new version is the one repaired
    assert (found.revived, found.tombstoned, found.repaired) == (0, 0, 1)
    assert _current_ids(s3, tmp_path / "l") == [1, 2]
    con = duckdb.connect()
    for statement in duckdb_statements(str(tmp_path / "l"), ITEM_COLUMNS, True):
        con.execute(statement)
    assert con.execute("SELECT v FROM item_current WHERE id = 2").fetchall() == [("new",)]


def test_a_revival_left_unwritten_under_no_repair_makes_the_table_not_whole(
    conn: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    # GIVEN a tombstoned key restored as it was
    lake = _ingested_then_tombstoned(conn, db_settings, s3)
    conn.run("INSERT INTO item SELECT * FROM item_backup WHERE id = 2")
    # WHEN audited without repairs THEN it is reported, not written
    before = _objects(s3)
    found = _audit(conn, lake, "item", replace(AUDIT, repair=False))
    assert (found.revived, found.status) == (1, "not whole")
    assert _objects(s3) == before


def test_a_live_row_whose_cursor_was_set_null_is_not_tombstoned(
    conn: Any, db_settings: dict[str, Any], s3: Any, tmp_path: Path
) -> None:
    # GIVEN a NULL-able cursor (StartRun accepts it) and a row ingested, then its
    # last_updated cleared by an application
    _item(conn, db_settings, cursor_null=True)
    lake = Lake(s3, BUCKET)
    conn.run("INSERT INTO item (id, v) VALUES (1, 'a'), (2, 'b')")
    _run(conn, lake, "item")
    conn.run("UPDATE item SET last_updated = NULL WHERE id = 2")
    # THEN the audit must not record the live key as deleted, nor the view hide it
    found = _audit(conn, lake, "item")
    assert (found.deleted, found.tombstoned) == (0, 0), found.examples
    assert _current_ids(s3, tmp_path / "l") == [1, 2] == _ids(conn)


# --- partitions of the key space ------------------------------------------------------------


def test_versions_on_partition_boundaries_and_negative_keys_are_repaired_once(
    conn: Any, db_settings: dict[str, Any], s3: Any, connect: Any
) -> None:
    # GIVEN keys -9..12 in partitions of 4 (boundaries -5, -1, 3, 7, 11), the lake holding
    # every other one (the rest written behind the watermark by a New York session)
    _item(conn, db_settings)
    lake = Lake(s3, BUCKET)
    conn.run("INSERT INTO item (id, v) SELECT g, 'x' FROM generate_series(-9, 12, 2) AS g")
    _run(conn, lake, "item")
    new_york = connect(db_settings)
    new_york.run("SET TimeZone = 'America/New_York'")
    new_york.run(
        "INSERT INTO item (id, v, last_updated) SELECT g, 'ny', now() "
        "FROM generate_series(-8, 12, 2) AS g"
    )
    new_york.close()
    # WHEN audited twice THEN each lost version is repaired exactly once
    found = _audit(conn, lake, "item")
    assert (found.missing, found.repaired, found.deleted) == (11, 11, 0)
    assert found.partitions == 6
    # (a second audit here re-repairs: see test_the_audit_after_a_repair_...)
    versions = Counter((r["id"], r["last_updated"]) for r in read_table(s3, "item"))
    assert sorted(k for k, _ in versions) == list(range(-9, 13))
    assert set(versions.values()) == {1}


def test_bigint_keys_at_the_extremes_are_audited(
    conn: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    _item(conn, db_settings)
    lake = Lake(s3, BUCKET)
    conn.run(
        "INSERT INTO item (id, v) VALUES (-9223372036854775808, 'min'), "
        "(9223372036854775807, 'max')"
    )
    _run(conn, lake, "item")
    found = audit.audit_tables(conn, lake, ["item"], audit.AuditSettings(), audit_id="adv")
    assert [r.status for r in found] == ["whole"]


# --- repair written twice -----------------------------------------------------------------


def test_the_audit_after_a_repair_does_not_repair_the_committed_versions(
    conn: Any, db_settings: dict[str, Any], s3: Any, connect: Any
) -> None:
    # GIVEN two versions committed by the pipeline (an hour old: inside the judged range)
    _item(conn, db_settings)
    lake = Lake(s3, BUCKET)
    conn.run("INSERT INTO item (id, v) VALUES (1, 'a'), (2, 'b')")
    _run(conn, lake, "item")
    # ... and one written behind the watermark, repaired by a first audit
    new_york = connect(db_settings)
    new_york.run("SET TimeZone = 'America/New_York'")
    new_york.run("INSERT INTO item (id, v, last_updated) VALUES (3, 'ny', now())")
    new_york.close()
    settings = audit.AuditSettings()  # default partitions: one
    first = _audit(conn, lake, "item", settings)
    assert (first.missing, first.repaired) == (1, 1)
    # WHEN the audit runs again THEN it finds nothing and writes nothing
    second = _audit(conn, lake, "item", settings)
    assert (second.missing, second.repaired, second.lake_versions) == (0, 0, 3), second.examples
    versions = Counter((r["id"], r["last_updated"]) for r in read_table(s3, "item"))
    assert set(versions.values()) == {1}


# --- the command, as a user runs it ---------------------------------------------------------


def _cli_item(db_settings: dict[str, Any]) -> pg8000.native.Connection:
    admin = pg8000.native.Connection(**db_settings)
    _utc(admin, db_settings)
    admin.run(
        "CREATE TABLE item (id int8 PRIMARY KEY, v text, "
        "last_updated timestamp NOT NULL DEFAULT now() - interval '1 hour')"
    )
    admin.run("INSERT INTO item (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    return admin


def _sql(lake: Path, query: str, cwd: Path) -> str:
    process = totes_ingest("sql", query, "--lake", str(lake), cwd=cwd)
    assert process.returncode == 0, process.stderr
    return process.stdout


@pytest.mark.e2e
def test_after_a_cli_audit_the_local_current_view_hides_the_deleted_key(
    db_settings: dict[str, Any], tmp_path: Path
) -> None:
    # GIVEN a table ingested by `totes-ingest run`, then a row deleted at the source
    admin = _cli_item(db_settings)
    url = database_url(db_settings)
    lake = tmp_path / "lake"
    common = ("--database-url", url, "--lake", str(lake))
    assert totes_ingest("run", *common, "--tables", "item", cwd=tmp_path).returncode == 0
    admin.run("DELETE FROM item WHERE id = 2")
    # WHEN the audit runs THEN it writes the tombstone and says so in its JSON
    process = totes_ingest("audit", *common, "--tables", "item", "--json", cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    (table,) = json.loads(process.stdout)["tables"]
    assert (table["deleted"], table["tombstoned"]) == (1, 1)
    assert (lake / table["tombstone_key"]).is_file()
    # ... and the current state, one command away, no longer shows the deleted key
    shown = _sql(lake, "SELECT string_agg(id::text, ',' ORDER BY id) FROM item_current", tmp_path)
    assert "1,2,3" not in shown, shown
    assert "1,3" in shown, shown
    admin.close()


@pytest.mark.e2e
def test_a_cli_audit_that_repairs_lists_what_it_wrote_and_exits_0(
    db_settings: dict[str, Any], tmp_path: Path
) -> None:
    admin = _cli_item(db_settings)
    url = database_url(db_settings)
    lake = tmp_path / "lake"
    common = ("--database-url", url, "--lake", str(lake))
    assert totes_ingest("run", *common, "--tables", "item", cwd=tmp_path).returncode == 0
    writer = pg8000.native.Connection(**db_settings)
    writer.run("SET TimeZone = 'America/New_York'")
    writer.run("INSERT INTO item (id, v, last_updated) VALUES (4, 'ny', now())")
    writer.close()
    before = {p.relative_to(lake) for p in lake.rglob("*") if p.is_file()}
    process = totes_ingest("audit", *common, "--tables", "item", "--json", cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    report = json.loads(process.stdout)
    (table,) = report["tables"]
    assert report["whole"] is True
    assert (table["missing"], table["repaired"], table["status"]) == (1, 1, "repaired")
    written = {p.relative_to(lake) for p in lake.rglob("*") if p.is_file()} - before
    assert {str(p) for p in written} == set(table["repair_keys"])
    admin.close()


@pytest.mark.e2e
def test_a_cli_audit_that_cannot_judge_a_table_exits_1(
    db_settings: dict[str, Any], tmp_path: Path
) -> None:
    # GIVEN a table ingested, then its primary key widened by a migration: the lake's files
    # lack the new key column, so the audit cannot judge the table (status failed)
    admin = _cli_item(db_settings)
    url = database_url(db_settings)
    lake = tmp_path / "lake"
    common = ("--database-url", url, "--lake", str(lake))
    assert totes_ingest("run", *common, "--tables", "item", cwd=tmp_path).returncode == 0
    admin.run("ALTER TABLE item ADD COLUMN region int NOT NULL DEFAULT 0")
    admin.run("ALTER TABLE item DROP CONSTRAINT item_pkey, ADD PRIMARY KEY (id, region)")
    process = totes_ingest("audit", *common, "--tables", "item", "--json", cwd=tmp_path)
    (table,) = json.loads(process.stdout)["tables"]
    assert table["status"] == "failed", table
    assert process.returncode == 1, process.stderr
    admin.close()


def test_the_pipelines_reread_of_a_timestamp_keyed_table_writes_each_version_once(
    conn: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    _utc(conn, db_settings)
    conn.run(
        "CREATE TABLE reading (device text, taken_at timestamp, v int, "
        "last_updated timestamp NOT NULL DEFAULT now(), PRIMARY KEY (device, taken_at))"
    )
    lake = Lake(s3, BUCKET)
    conn.run("INSERT INTO reading (device, taken_at, v) VALUES ('a', '2026-01-01', 1)")
    _run(conn, lake, "reading")
    conn.run("INSERT INTO reading (device, taken_at, v) VALUES ('b', '2026-01-01', 2)")
    _run(conn, lake, "reading")
    versions = Counter((r["device"], r["last_updated"]) for r in read_table(s3, "reading"))
    assert sorted(versions.values()) == [1, 1], versions


# --- faults the audit must survive table by table ----------------------------------------


def test_one_table_with_an_infinity_cursor_does_not_stop_the_others_being_audited(
    conn: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    _item(conn, db_settings)
    conn.run("CREATE TABLE other (id int PRIMARY KEY, last_updated timestamp NOT NULL)")
    conn.run("INSERT INTO other VALUES (1, now() - interval '1 hour')")
    lake = Lake(s3, BUCKET)
    conn.run("INSERT INTO item (id, v) VALUES (1, 'a')")
    _run(conn, lake, "item")
    _run(conn, lake, "other")
    conn.run("INSERT INTO item (id, v, last_updated) VALUES (2, 'never', 'infinity')")
    conn.run("DELETE FROM other")
    found = audit.audit_tables(conn, lake, ["item", "other"], AUDIT, audit_id="adv")
    assert [r.status for r in found] == ["failed", "repaired"]


# --- the judged bound and the horizon -------------------------------------------------------


@pytest.mark.parametrize(
    ("cursor_type", "zone"),
    [
        ("timestamp", "UTC"),
        ("timestamp(0)", "UTC"),
        ("timestamp(3)", "America/Sao_Paulo"),
        ("timestamptz", "Asia/Kolkata"),
        ("timestamptz(0)", "Asia/Kolkata"),
    ],
)
def test_versions_either_side_of_the_judged_bound_are_written_once_by_audit_or_window(
    conn: Any, db_settings: dict[str, Any], s3: Any, cursor_type: str, zone: str
) -> None:
    # GIVEN a table ingested once, and the bound the audit judges below
    conn.run(f"ALTER DATABASE \"{db_settings['database']}\" SET timezone = '{zone}'")
    conn.run(f"SET TimeZone = '{zone}'")
    conn.run(
        f"CREATE TABLE edge (id int PRIMARY KEY, last_updated {cursor_type} NOT NULL DEFAULT now())"
    )
    lake = Lake(s3, BUCKET)
    conn.run("INSERT INTO edge (id, last_updated) VALUES (0, now() - interval '1 hour')")
    _run(conn, lake, "edge")
    probe = _audit(conn, lake, "edge", audit.AuditSettings(repair=False))
    assert probe.judged_until is not None
    bound = parse_time(probe.judged_until)
    # ... versions written behind the watermark just below, on and just above that bound
    # (instants given in UTC for timestamptz, the zone's wall clock for timestamp)
    deltas = [-1_000_000, -1_000, -1, 0, 1, 1_000, 1_000_000]
    cast = "(CAST(:v AS timestamp) AT TIME ZONE 'UTC')" if "tz" in cursor_type else ":v"
    for i, micros in enumerate(deltas, start=1):
        value = bound + timedelta(microseconds=micros)
        conn.run(f"INSERT INTO edge (id, last_updated) VALUES ({i}, {cast})", v=value)
    # WHEN the audit repairs and the next window re-reads
    _audit(conn, lake, "edge")
    _run(conn, lake, "edge")
    # THEN every version is in the lake exactly once
    source = {(r[0], r[1]) for r in conn.run("SELECT id, last_updated FROM edge")}
    versions = Counter((r["id"], r["last_updated"]) for r in read_table(s3, "edge"))
    assert set(versions.values()) == {1}, versions
    assert {k for k, _ in versions} == {k for k, _ in source}


def test_a_key_deleted_after_a_repair_in_its_partition_is_tombstoned(
    conn: Any, db_settings: dict[str, Any], s3: Any, connect: Any, tmp_path: Path
) -> None:
    # GIVEN rows 1 and 2 committed, and row 3 (written behind the watermark) repaired
    _item(conn, db_settings)
    lake = Lake(s3, BUCKET)
    conn.run("INSERT INTO item (id, v, last_updated) VALUES (1, 'a', now()), (2, 'b', now())")
    _run(conn, lake, "item")
    new_york = connect(db_settings)
    new_york.run("SET TimeZone = 'America/New_York'")
    new_york.run("INSERT INTO item (id, v, last_updated) VALUES (3, 'ny', now())")
    new_york.close()
    assert _audit(conn, lake, "item").repaired == 1
    # WHEN row 1 is deleted and the audit runs again
    conn.run("DELETE FROM item WHERE id = 1")
    found = _audit(conn, lake, "item")
    # THEN it is tombstoned, and gone from the current view
    assert (found.deleted, found.tombstoned) == (1, 1), found
    assert _current_ids(s3, tmp_path / "l") == [2, 3] == _ids(conn)


def test_an_audit_killed_after_its_repair_object_is_finished_by_the_next_without_rewriting(
    conn: Any, db_settings: dict[str, Any], s3: Any, connect: Any, monkeypatch: Any
) -> None:
    # GIVEN a repair to make and a delete to record, in two partitions
    _item(conn, db_settings)
    lake = Lake(s3, BUCKET)
    conn.run(
        "INSERT INTO item (id, v, last_updated) SELECT g, 'x', now() FROM generate_series(1, 8) g"
    )
    _run(conn, lake, "item")
    new_york = connect(db_settings)
    new_york.run("SET TimeZone = 'America/New_York'")
    new_york.run("INSERT INTO item (id, v, last_updated) VALUES (0, 'ny', now()), (9, 'ny', now())")
    new_york.close()
    conn.run("DELETE FROM item WHERE id = 5")

    # WHEN the audit dies after its repair objects, before its tombstones
    def killed(self: Any, repair: bool) -> None:
        raise RuntimeError("killed")

    with monkeypatch.context() as patched:
        patched.setattr(audit._Tombstones, "upload", killed)
        with pytest.raises(RuntimeError):
            _audit(conn, lake, "item")
    assert len([k for k in _objects(s3) if "-repair-" in k]) == 2
    # THEN the next audit writes only the tombstone, and each version is in the lake once
    again = _audit(conn, lake, "item")
    assert (again.missing, again.repaired, again.tombstoned) == (0, 0, 1), again
    versions = Counter((r["id"], r["last_updated"]) for r in read_table(s3, "item"))
    assert set(versions.values()) == {1}


def test_a_table_in_another_schema_is_audited_there_not_in_public(
    conn: Any, db_settings: dict[str, Any], s3: Any, connect: Any
) -> None:
    # GIVEN sales.item ingested with SOURCE_SCHEMA=sales, beside an unrelated public.item
    _utc(conn, db_settings)
    conn.run("CREATE SCHEMA sales")
    for schema in ("sales", "public"):
        conn.run(
            f"CREATE TABLE {schema}.item (id int PRIMARY KEY, v text, "
            "last_updated timestamp NOT NULL DEFAULT now() - interval '1 hour')"
        )
    conn.run("INSERT INTO sales.item (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    conn.run("INSERT INTO public.item (id, v) VALUES (7, 'public'), (8, 'public')")
    lake = Lake(s3, BUCKET)
    settings = pipeline.RunSettings(
        fallback_lag_seconds=0, max_concurrency=1, safety_margin_seconds=0, schema="sales"
    )
    run = pipeline.start_run({"tables_to_query": ["item"]}, conn, settings)
    item = {
        "table": "item",
        **{k: run[k] for k in ("end_time", "run_id", "source_timezone", "hold")},
    }
    item = pipeline.find_watermark(item, lake)
    item = pipeline.stage_table(item, conn, lake, row_group_rows=1000, schema="sales")
    pipeline.commit_table(item, lake)
    new_york = connect(db_settings)
    new_york.run("SET TimeZone = 'America/New_York'")
    new_york.run("INSERT INTO sales.item (id, v, last_updated) VALUES (4, 'ny', now())")
    new_york.run("DELETE FROM sales.item WHERE id = 2")
    new_york.close()
    # WHEN audited with schema sales THEN it judges sales.item only
    found = _audit(conn, lake, "item", audit.AuditSettings(schema="sales"))
    assert (found.source_rows, found.missing, found.repaired) == (3, 1, 1), found
    assert (found.deleted, found.tombstoned, found.newer_in_lake) == (1, 1, 0)
    repaired = [r for r in read_table(s3, "item") if r["id"] == 4]
    assert [r["v"] for r in repaired] == ["ny"]


# --- what readers see versus what the audit reads -----------------------------------------


def test_a_stray_file_readers_see_with_a_version_newer_than_the_source_is_flagged(
    conn: Any, db_settings: dict[str, Any], s3: Any, tmp_path: Path
) -> None:
    # GIVEN a table ingested, and a file under its prefix that no claim names (an
    # operator's restore, a replication, a hand-made fix), holding a newer version of id 1
    _item(conn, db_settings)
    lake = Lake(s3, BUCKET)
    conn.run("INSERT INTO item (id, v) VALUES (1, 'a'), (2, 'b')")
    _run(conn, lake, "item")
    (committed,) = table_files(s3, "item")
    window = read_file(s3, committed)
    forged = window.filter(pa.compute.equal(window.column("id"), 1))
    forged = forged.set_column(
        forged.schema.get_field_index("v"), forged.schema.field("v"), pa.array(["forged"])
    )
    later = forged.column("last_updated")[0].as_py() + timedelta(days=1)
    forged = forged.set_column(
        forged.schema.get_field_index("last_updated"),
        forged.schema.field("last_updated"),
        pa.array([later], forged.schema.field("last_updated").type),
    )
    buffer = io.BytesIO()
    pq.write_table(forged, buffer)
    stray = committed.rsplit("/", 1)[0] + "/000000000001.parquet"
    s3.put_object(Bucket=BUCKET, Key=stray, Body=buffer.getvalue())
    # ... which readers take as id 1's current version
    shown = duckdb_current_values(s3, tmp_path / "l")
    assert shown[1] == "forged"
    # THEN the audit must not call the lake whole
    found = _audit(conn, lake, "item", audit.AuditSettings(horizon_days=None))
    assert found.newer_in_lake == 1, found
    assert found.stray == 1
    assert found.examples["stray"] == [stray]
    assert not found.whole


def duckdb_current_values(s3: Any, folder: Path) -> dict[int, str]:
    """``{id: v}`` of ``item_current``, DuckDB over a copy of the bucket."""
    _current_ids(s3, folder)
    con = duckdb.connect()
    tombstones = any(folder.glob("_tombstones/item/*/*/*/*.parquet"))
    for statement in duckdb_statements(str(folder), ITEM_COLUMNS, tombstones):
        con.execute(statement)
    return dict(con.execute('SELECT id, v FROM "item_current"').fetchall())


def test_sparse_bigint_keys_do_not_make_a_partition_per_million_empty_values(
    conn: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    _item(conn, db_settings)
    lake = Lake(s3, BUCKET)
    conn.run("INSERT INTO item (id, v) VALUES (1, 'first'), (3000000001, 'second')")
    _run(conn, lake, "item")
    found = _audit(conn, lake, "item", audit.AuditSettings())
    assert found.status == "whole"
    assert found.partitions <= 2, found.partitions


def test_under_the_extension_profile_a_uuid_keyed_table_is_audited_and_tombstoned(
    conn: Any, db_settings: dict[str, Any], s3: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("PARQUET_TYPE_PROFILE", "extension")
    _utc(conn, db_settings)
    conn.run(
        "CREATE TABLE tagged (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), v text, "
        "last_updated timestamp NOT NULL DEFAULT now() - interval '1 hour')"
    )
    conn.run("INSERT INTO tagged (v) VALUES ('a'), ('b')")
    lake = Lake(s3, BUCKET)
    run = pipeline.start_run({"tables_to_query": ["tagged"]}, conn, SETTINGS)
    item = {
        "table": "tagged",
        **{k: run[k] for k in ("end_time", "run_id", "source_timezone", "hold")},
    }
    item = pipeline.find_watermark(item, lake)
    item = pipeline.stage_table(item, conn, lake, row_group_rows=1000, type_profile="extension")
    pipeline.commit_table(item, lake)
    conn.run("DELETE FROM tagged WHERE v = 'a'")
    found = _audit(conn, lake, "tagged")
    assert found.tombstone_key is not None
    stone = pq.read_schema(
        io.BytesIO(s3.get_object(Bucket=BUCKET, Key=found.tombstone_key)["Body"].read())
    )
    (data,) = table_files(s3, "tagged")
    assert stone.field("id").type == read_file(s3, data).schema.field("id").type


def test_under_the_extension_profile_a_uuid_keyed_table_ingests_twice(
    conn: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    _utc(conn, db_settings)
    conn.run(
        "CREATE TABLE tagged (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), v text, "
        "last_updated timestamp NOT NULL DEFAULT now())"
    )
    lake = Lake(s3, BUCKET)
    for v in ("a", "b"):
        conn.run("INSERT INTO tagged (v) VALUES (:v)", v=v)
        run = pipeline.start_run({"tables_to_query": ["tagged"]}, conn, SETTINGS)
        item = {
            "table": "tagged",
            **{k: run[k] for k in ("end_time", "run_id", "source_timezone", "hold")},
        }
        item = pipeline.find_watermark(item, lake)
        item = pipeline.stage_table(item, conn, lake, row_group_rows=1000, type_profile="extension")
        pipeline.commit_table(item, lake)
    assert sorted(r["v"] for r in read_table(s3, "tagged")) == ["a", "b"]


# --- a partitioned (declarative) source table ---------------------------------------------


def _partitioned(conn: Any, db_settings: dict[str, Any]) -> None:
    _utc(conn, db_settings)
    conn.run(
        "CREATE TABLE measure (id int8 PRIMARY KEY, v text, "
        "last_updated timestamp NOT NULL DEFAULT now() - interval '1 hour') "
        "PARTITION BY RANGE (id)"
    )
    conn.run("CREATE TABLE measure_low PARTITION OF measure FOR VALUES FROM (0) TO (100)")
    conn.run("CREATE TABLE measure_high PARTITION OF measure FOR VALUES FROM (100) TO (200)")


def test_a_version_lost_in_a_partitioned_table_is_repaired_once(
    conn: Any, db_settings: dict[str, Any], s3: Any, connect: Any
) -> None:
    _partitioned(conn, db_settings)
    lake = Lake(s3, BUCKET)
    conn.run("INSERT INTO measure (id, v) VALUES (1, 'low'), (101, 'high'), (102, 'high')")
    _run(conn, lake, "measure")
    new_york = connect(db_settings)
    new_york.run("SET TimeZone = 'America/New_York'")
    new_york.run("INSERT INTO measure (id, v, last_updated) VALUES (2, 'lost', now())")
    new_york.close()
    found = _audit(conn, lake, "measure")
    assert (found.status, found.missing, found.repaired) == ("repaired", 1, 1), found
    versions = Counter((r["id"], r["last_updated"]) for r in read_table(s3, "measure"))
    assert set(versions.values()) == {1}
    assert sorted(k for k, _ in versions) == [1, 2, 101, 102]


def test_a_late_version_in_a_partitioned_table_is_reread_once(
    conn: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    _partitioned(conn, db_settings)
    lake = Lake(s3, BUCKET)
    conn.run("INSERT INTO measure (id, v) VALUES (1, 'low'), (101, 'high'), (102, 'high')")
    _run(conn, lake, "measure")
    conn.run(
        "INSERT INTO measure (id, v, last_updated) VALUES (2, 'late', now() - interval '60 s')"
    )
    _run(conn, lake, "measure")
    versions = Counter((r["id"], r["last_updated"]) for r in read_table(s3, "measure"))
    assert set(versions.values()) == {1}, versions
    assert sorted(k for k, _ in versions) == [1, 2, 101, 102]
