"""The audit against a real PostgreSQL: it finds what the pipeline lost, repairs it once,
records deletes once, and writes nothing over a whole lake."""

from __future__ import annotations

import io
from collections import Counter
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import BUCKET
from tests.lakecheck import lake_keys, read_file, read_table, table_files
from totes_ingest import audit, pipeline
from totes_ingest.generate_file_key import parse_repair_key
from totes_ingest.lake import Lake
from totes_ingest.local.dburl import connect

pytestmark = pytest.mark.integration

SETTINGS = pipeline.RunSettings(fallback_lag_seconds=0, max_concurrency=1, safety_margin_seconds=0)
AUDIT = audit.AuditSettings(partition_keys=4)


def _run(conn: Any, lake: Lake, table: str = "item") -> dict[str, Any]:
    """One table through StartRun, GetLastIngestTime, QueryToParquet and CommitTable."""
    run = pipeline.start_run({"tables_to_query": [table]}, conn, SETTINGS)
    item = {
        "table": table,
        **{k: run[k] for k in ("end_time", "run_id", "source_timezone", "hold")},
    }
    item = pipeline.find_watermark(item, lake)
    item = pipeline.stage_table(item, conn, lake, row_group_rows=1000, reread_lag_seconds=300)
    return pipeline.commit_table(item, lake) if item["rows"] else item


def _audit(conn: Any, lake: Lake, settings: audit.AuditSettings = AUDIT) -> audit.TableAudit:
    return audit.audit_table(conn, lake, "item", settings, audit_id="test")


def _versions(s3: Any) -> Counter[tuple[int, datetime]]:
    return Counter((row["id"], row["last_updated"]) for row in read_table(s3, "item"))


def _insert(writer: Any, n: int) -> list[tuple[int, datetime]]:
    return [
        tuple(writer.run("INSERT INTO item (v) VALUES ('x') RETURNING id, last_updated")[0])
        for _ in range(n)
    ]


def _objects(s3: Any) -> dict[str, str]:
    listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {item["Key"]: item["ETag"] for item in listed}


@pytest.fixture
def items(conn: Any, db_settings: dict[str, Any]) -> Any:
    conn.run(f"ALTER DATABASE \"{db_settings['database']}\" SET timezone = 'UTC'")
    conn.run("SET TimeZone = 'UTC'")
    conn.run(
        "CREATE TABLE item (id serial PRIMARY KEY, v text, n numeric(10,2) DEFAULT 1.50, "
        "last_updated timestamp NOT NULL DEFAULT now())"
    )
    return conn


def test_a_new_york_writer_lost_by_the_pipeline_is_found_and_repaired_exactly_once(
    items: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    # GIVEN a UTC database, a lake holding its rows, and a writer session in New York
    lake = Lake(s3, BUCKET)
    utc = connect(db_settings)
    _insert(utc, 5)
    _run(items, lake)
    new_york = connect(db_settings)
    new_york.run("SET TimeZone = 'America/New_York'")
    # ... whose now() lands hours below the watermark: the pipeline never sees it
    lost = _insert(new_york, 3)
    _insert(utc, 2)
    _run(items, lake)
    assert all(_versions(s3)[v] == 0 for v in lost)
    assert sum(_versions(s3).values()) == 7
    # WHEN the audit runs
    found = _audit(items, lake)
    # THEN it finds exactly those versions and writes them once, as one repair object
    assert (found.missing, found.repaired, found.status) == (3, 3, "repaired")
    assert found.examples["missing"]
    versions = _versions(s3)
    assert all(versions[v] == 1 for v in lost), versions
    assert sum(versions.values()) == 10
    (repair,) = found.repair_keys
    assert parse_repair_key(repair) is not None
    assert repair in lake_keys(s3, "item/")
    assert repair not in table_files(s3, "item")  # never a link of the watermark chain
    # ... bit for bit what a window would have written: same schema, field metadata
    window_file = read_file(s3, table_files(s3, "item")[0])
    repaired = read_file(s3, repair)
    assert repaired.schema.equals(window_file.schema, check_metadata=True)
    db_rows = {r[0]: r for r in items.run("SELECT id, v, n, last_updated FROM item")}
    for row in repaired.to_pylist():
        assert (row["id"], row["v"], row["n"], row["last_updated"]) == tuple(db_rows[row["id"]])
    # ... and a second audit finds nothing and writes nothing
    before = _objects(s3)
    again = _audit(items, lake)
    assert (again.missing, again.repaired, again.deleted, again.status) == (0, 0, 0, "whole")
    assert _objects(s3) == before
    # ... nor does the pipeline write them again
    _insert(utc, 1)
    _run(items, lake)
    assert max(_versions(s3).values()) == 1
    for session in (utc, new_york):
        session.close()


def test_an_audit_over_a_whole_lake_writes_nothing(
    items: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    lake = Lake(s3, BUCKET)
    writer = connect(db_settings)
    _insert(writer, 9)
    _run(items, lake)
    writer.run("UPDATE item SET v = 'y', last_updated = now() WHERE id IN (2, 7)")
    _run(items, lake)
    before = _objects(s3)
    found = _audit(items, lake)
    assert found.status == "whole"
    assert found.whole
    assert (found.missing, found.newer_in_lake, found.deleted) == (0, 0, 0)
    assert found.source_rows == 9
    assert found.lake_versions == 11
    assert found.partitions == 3  # keys 1-9 in ranges of 4
    assert _objects(s3) == before
    writer.close()


def test_report_only_finds_the_missing_versions_and_writes_nothing(
    items: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    lake = Lake(s3, BUCKET)
    _insert(items, 2)
    _run(items, lake)
    new_york = connect(db_settings)
    new_york.run("SET TimeZone = 'America/New_York'")
    _insert(new_york, 2)
    _insert(items, 1)
    _run(items, lake)
    before = _objects(s3)
    found = _audit(items, lake, audit.AuditSettings(repair=False))
    assert (found.missing, found.repaired, found.status) == (2, 0, "not whole")
    assert _objects(s3) == before
    new_york.close()


def _tombstones(s3: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for key in lake_keys(s3, "_tombstones/item/"):
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        rows.extend(pq.read_table(io.BytesIO(body)).to_pylist())
    return rows


def test_deleted_keys_get_one_tombstone_and_again_after_a_reinsert(
    items: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    # GIVEN a lake holding rows that are then deleted at the source
    lake = Lake(s3, BUCKET)
    _insert(items, 6)
    _run(items, lake)
    items.run("DELETE FROM item WHERE id IN (2, 5)")
    data_before = lake_keys(s3, "item/")
    # WHEN the audit runs
    found = _audit(items, lake)
    # THEN each deleted key gets one tombstone, in the documented place and schema
    assert (found.deleted, found.tombstoned, found.missing) == (2, 2, 0)
    assert found.tombstone_key is not None
    assert found.tombstone_key.startswith("_tombstones/item/")
    assert lake_keys(s3, "item/") == data_before  # no row deleted from the lake
    (key,) = lake_keys(s3, "_tombstones/")
    schema = pq.read_schema(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
    data_schema = read_file(s3, table_files(s3, "item")[0]).schema
    assert schema.names == ["id", "deleted_at", "last_version"]
    assert schema.field("id").type == data_schema.field("id").type == pa.int32()
    assert schema.field("deleted_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("last_version").type == data_schema.field("last_updated").type
    stones = _tombstones(s3)
    assert sorted(r["id"] for r in stones) == [2, 5]
    # ... a second audit writes none
    before = _objects(s3)
    again = _audit(items, lake)
    assert (again.deleted, again.tombstoned, again.status) == (0, 0, "whole")
    assert _objects(s3) == before
    # ... a key inserted again, ingested, and deleted again gets a new tombstone
    items.run("INSERT INTO item (id, v) VALUES (5, 'back')")
    _run(items, lake)
    items.run("DELETE FROM item WHERE id = 5")
    third = _audit(items, lake)
    assert (third.deleted, third.tombstoned) == (1, 1)
    stones = [r for r in _tombstones(s3) if r["id"] == 5]
    assert len(stones) == 2
    assert stones[0]["last_version"] != stones[1]["last_version"]
    assert _audit(items, lake).tombstoned == 0


def test_report_only_counts_deletes_without_a_tombstone(
    items: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    lake = Lake(s3, BUCKET)
    _insert(items, 3)
    _run(items, lake)
    items.run("DELETE FROM item WHERE id = 1")
    found = _audit(items, lake, audit.AuditSettings(repair=False))
    assert (found.deleted, found.tombstoned, found.status) == (1, 0, "not whole")
    assert lake_keys(s3, "_tombstones/") == []


def test_a_key_newer_in_the_lake_than_at_the_source_is_flagged(
    items: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    # GIVEN a row ingested, then updated by a writer whose clock is hours behind
    lake = Lake(s3, BUCKET)
    _insert(items, 2)
    _run(items, lake)
    new_york = connect(db_settings)
    new_york.run("SET TimeZone = 'America/New_York'")
    new_york.run("UPDATE item SET v = 'behind', last_updated = now() WHERE id = 1")
    _insert(items, 1)
    _run(items, lake)
    # WHEN the audit runs THEN the lost version is repaired, and the key flagged
    found = _audit(items, lake)
    assert (found.missing, found.repaired, found.newer_in_lake) == (1, 1, 1)
    assert found.status == "not whole"
    assert "id=1" in found.examples["newer_in_lake"][0]
    new_york.close()


def test_versions_within_the_next_windows_reread_are_left_to_it(
    items: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    # GIVEN a version written just below the watermark (by less than the re-read lag)
    lake = Lake(s3, BUCKET)
    _insert(items, 2)
    _run(items, lake)
    behind = connect(db_settings)
    behind.run("SET TimeZone = 'UTC'")
    behind.run("INSERT INTO item (v, last_updated) VALUES ('late', now() - interval '60 seconds')")
    # WHEN the audit runs before the next window THEN it neither judges nor writes it
    before = _objects(s3)
    found = _audit(items, lake)
    assert (found.missing, found.repaired, found.status) == (0, 0, "whole")
    assert _objects(s3) == before
    # ... and the next window's re-read ingests it, once
    _run(items, lake)
    assert sum(_versions(s3).values()) == 3
    assert max(_versions(s3).values()) == 1
    behind.close()


def test_a_full_audit_judges_versions_older_than_the_horizon(
    items: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    lake = Lake(s3, BUCKET)
    _insert(items, 2)
    _run(items, lake)
    old = connect(db_settings)
    old.run("INSERT INTO item (v, last_updated) VALUES ('old', now() - interval '30 days')")
    _insert(items, 1)
    _run(items, lake)
    assert _audit(items, lake, audit.AuditSettings(repair=False)).missing == 0
    assert _audit(items, lake, audit.AuditSettings(horizon_days=None)).repaired == 1
    assert _audit(items, lake, audit.AuditSettings(horizon_days=None)).missing == 0
    assert max(_versions(s3).values()) == 1
    assert sum(_versions(s3).values()) == 4
    old.close()
