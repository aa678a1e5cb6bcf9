"""Exactly once without hidden assumptions: every row version lands once, through the
pipeline's own steps against a real PostgreSQL, where it once was lost.

- a fall-back of the source's zone (a POSIX rule puts it seconds from now);
- a writer whose value lies below the window start (a client clock behind, or a
  transaction the end bound could not see): the re-read overlap picks it up, once;
- a ``timestamp(0)`` cursor, whose values round below the bound;
- names that must resolve to the table of the source schema, and nothing else.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.clock import fall_back_zone
from tests.conftest import BUCKET
from tests.lakecheck import read_table
from totes_ingest import pipeline, reread
from totes_ingest.errors import InvalidEvent, ReconciliationError
from totes_ingest.lake import Lake
from totes_ingest.local.dburl import connect

pytestmark = pytest.mark.integration

SETTINGS = pipeline.RunSettings(fallback_lag_seconds=0, max_concurrency=1, safety_margin_seconds=0)


def _run(conn: Any, lake: Lake, table: str, *, lag: float = 300) -> dict[str, Any]:
    """One table through StartRun, GetLastIngestTime, QueryToParquet and CommitTable."""
    run = pipeline.start_run({"tables_to_query": [table]}, conn, SETTINGS)
    item = {
        "table": table,
        **{k: run[k] for k in ("end_time", "run_id", "source_timezone", "hold")},
    }
    item = pipeline.find_watermark(item, lake)
    item = pipeline.stage_table(item, conn, lake, row_group_rows=1000, reread_lag_seconds=lag)
    return pipeline.commit_table(item, lake) if item["rows"] else item


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _versions(s3: Any, table: str) -> Counter[tuple[int, datetime]]:
    return Counter((row["id"], row["last_updated"]) for row in read_table(s3, table))


def _write(writer: Any, sql: str, **params: Any) -> tuple[int, datetime]:
    ((row_id, at),) = writer.run(sql + " RETURNING id, last_updated", **params)
    return row_id, at


def _insert(writer: Any, n: int) -> list[tuple[int, datetime]]:
    return [_write(writer, "INSERT INTO item (v) VALUES ('x')") for _ in range(n)]


@pytest.fixture
def items(conn: Any) -> Any:
    conn.run(
        "CREATE TABLE item (id serial PRIMARY KEY, v text, "
        "last_updated timestamp NOT NULL DEFAULT now())"
    )
    return conn


def test_across_a_fall_back_no_version_is_lost_or_written_twice(
    items: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    # GIVEN a database whose zone falls back an hour a few seconds from now
    zone, change = fall_back_zone(6)
    items.run(f"ALTER DATABASE \"{db_settings['database']}\" SET timezone = '{zone}'")
    writer, ingest, lake = connect(db_settings), connect(db_settings), Lake(s3, BUCKET)
    # ... versions written, and ingested, before the change
    written = _insert(writer, 5)
    assert _run(ingest, lake, "item")["rows"] == 5
    # WHEN the clock falls back and new versions carry wall-clock times already ingested
    time.sleep(max(0.0, (change - datetime.now(UTC).replace(tzinfo=None)).total_seconds()) + 1)
    after = _insert(writer, 5)
    after.append(_write(writer, "UPDATE item SET v = 'z', last_updated = now() WHERE id = 1"))
    assert max(at for _, at in after) < max(at for _, at in written)
    # THEN the next run writes exactly the new versions, and the one after nothing
    assert _run(ingest, lake, "item")["rows"] == 6
    assert _run(ingest, lake, "item")["rows"] == 0
    assert _versions(s3, "item") == Counter(written + after)


def test_a_version_written_below_the_window_start_is_reread_once(
    items: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    # GIVEN an ingested table, then a writer whose clock is 30 s behind the database's
    writer, lake = connect(db_settings), Lake(s3, BUCKET)
    written = _insert(writer, 3)
    _run(items, lake, "item")
    late = _write(
        writer, "INSERT INTO item (v, last_updated) VALUES ('late', now() - '30 s'::interval)"
    )
    written += _insert(writer, 2)
    # WHEN the next runs re-read the overlap THEN the late version lands, once
    assert _run(items, lake, "item")["rows"] == 3
    assert _run(items, lake, "item")["rows"] == 0
    assert _versions(s3, "item") == Counter([*written, late])


def test_the_lake_is_read_for_the_overlap_only_when_the_source_has_rows_in_it(
    items: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    ranged: list[str] = []  # the lake's objects read (footers, row groups)
    s3.meta.events.register(
        "before-parameter-build.s3.GetObject",
        lambda params, **_: ranged.append(params["Key"]) if "Range" in params else None,
    )
    writer, lake = connect(db_settings), Lake(s3, BUCKET)
    writer.run("INSERT INTO item (v, last_updated) VALUES ('old', '2020-01-01')")
    _run(items, lake, "item")
    # GIVEN nothing in the overlap: the run reads none of the lake's files
    assert _run(items, lake, "item")["rows"] == 0
    assert ranged == []
    # GIVEN a version in the overlap: the lake's newest file is read, and it lands once
    late = _write(
        writer, "INSERT INTO item (v, last_updated) VALUES ('late', now() - '30 s'::interval)"
    )
    assert _run(items, lake, "item")["rows"] == 1
    assert ranged
    assert all(key.startswith("item/") for key in ranged)
    assert _run(items, lake, "item")["rows"] == 0
    assert late in _versions(s3, "item")


def test_a_slow_lake_read_in_the_snapshot_outlasts_an_idle_in_transaction_timeout(
    items: Any, db_settings: dict[str, Any], s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a server that ends sessions idle in a transaction for 1 s, and a lake read of
    # the overlap that takes 1.5 s (a large newest file), made while the snapshot waits
    # (review: every retry lost its connection, and the table never advanced)
    writer, lake = connect(db_settings), Lake(s3, BUCKET)
    writer.run("INSERT INTO item (v, last_updated) VALUES ('old', '2020-01-01')")
    _run(items, lake, "item")
    late = _write(
        writer, "INSERT INTO item (v, last_updated) VALUES ('late', now() - '30 s'::interval)"
    )
    database = db_settings["database"]
    items.run(f"ALTER DATABASE \"{database}\" SET idle_in_transaction_session_timeout = '1s'")
    ingest = connect(db_settings)
    real = reread.lake_versions

    def slow_lake_versions(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(reread, "lake_versions", slow_lake_versions)
    # THEN the window lands: the extract's transaction turns the timeout off for itself
    assert _run(ingest, lake, "item")["rows"] == 1
    assert late in _versions(s3, "item")
    ingest.close()


def test_without_the_overlap_that_version_would_be_lost(
    items: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    writer, lake = connect(db_settings), Lake(s3, BUCKET)
    _insert(writer, 3)
    _run(items, lake, "item", lag=0)
    late = _write(
        writer, "INSERT INTO item (v, last_updated) VALUES ('late', now() - '30 s'::interval)"
    )
    _run(items, lake, "item", lag=0)
    assert late not in _versions(s3, "item")


def test_a_timestamp_0_cursor_never_loses_a_value_rounded_below_the_bound(
    conn: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    # GIVEN last_updated timestamp(0): now() is rounded to the second, down as well as up
    conn.run("CREATE TABLE item (id serial PRIMARY KEY, last_updated timestamp(0) NOT NULL)")
    writer, lake = connect(db_settings), Lake(s3, BUCKET)
    first = _write(writer, "INSERT INTO item (last_updated) VALUES (now() - '2 s'::interval)")
    assert _run(conn, lake, "item", lag=0)["rows"] == 1
    # WHEN a later transaction's now() rounds down into the second the bound fell in
    run_end = lake.resolve_watermark("item").end
    assert run_end is not None
    rounded = run_end.replace(microsecond=0)
    second = _write(writer, "INSERT INTO item (last_updated) VALUES (:at)", at=rounded)
    # THEN the next window starts at that second and takes it, even with no overlap
    assert lake.resolve_watermark("item").cursor_end == rounded
    # ... once the bound has passed that second (until then the range [rounded, rounded)
    # is empty, and the version waits: it is not lost)
    time.sleep(max(0.0, (rounded + timedelta(seconds=1.1) - _utc_now()).total_seconds()))
    assert _run(conn, lake, "item", lag=0)["rows"] == 1
    assert _versions(s3, "item") == Counter([first, second])


def test_a_cursor_that_is_not_a_timestamp_is_refused_before_anything_runs(conn: Any) -> None:
    conn.run("CREATE TABLE dated (id int PRIMARY KEY, last_updated date)")
    conn.run("CREATE TABLE counted (id int PRIMARY KEY, last_updated bigint)")
    with pytest.raises(
        InvalidEvent, match=r"dated: last_updated is date.*counted: last_updated is int8"
    ):
        pipeline.start_run({"tables_to_query": ["dated", "counted"]}, conn, SETTINGS)


def _partitioned_sales(conn: Any) -> None:
    """A partitioned table, sales, and its one partition, sales_2026."""
    conn.run(
        "CREATE TABLE sales (id int, last_updated timestamp, PRIMARY KEY (id, last_updated))"
        " PARTITION BY RANGE (last_updated)"
    )
    conn.run(
        "CREATE TABLE sales_2026 PARTITION OF sales"
        " FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')"
    )


def test_a_partition_is_refused_and_its_parent_named(conn: Any) -> None:
    _partitioned_sales(conn)
    with pytest.raises(InvalidEvent, match="sales_2026: a partition of sales"):
        pipeline.start_run({"tables_to_query": ["sales", "sales_2026"]}, conn, SETTINGS)
    assert pipeline.start_run({"tables_to_query": ["sales"]}, conn, SETTINGS)["tables"] == ["sales"]


def test_the_run_starts_the_largest_tables_first(conn: Any) -> None:
    # GIVEN a small table, a partitioned one whose rows are all in its partitions, a large
    # one and two empty ones, named in the event in that order
    _partitioned_sales(conn)
    for name in ("small", "large", "empty_b", "empty_a"):
        conn.run(f"CREATE TABLE {name} (id int PRIMARY KEY, last_updated timestamp)")
    insert = "INSERT INTO {} SELECT g, '2026-06-01' FROM generate_series(1, {}) AS g"
    conn.run(insert.format("small", 10))
    conn.run(insert.format("sales", 20_000))
    conn.run(insert.format("large", 50_000))
    event = {"tables_to_query": ["small", "sales", "large", "empty_b", "empty_a"]}
    # THEN the Map gets them by size on disk, largest first; ties keep the event's order
    tables = pipeline.start_run(event, conn, SETTINGS)["tables"]
    assert tables == ["large", "sales", "small", "empty_b", "empty_a"]


def test_a_table_named_like_a_catalog_view_is_read_from_the_source_schema(
    conn: Any, s3: Any
) -> None:
    # GIVEN public.pg_stat_activity, a table (pg_catalog comes first on the search path)
    conn.run("CREATE TABLE pg_stat_activity (id int PRIMARY KEY, last_updated timestamp)")
    conn.run("INSERT INTO public.pg_stat_activity VALUES (7, now())")
    result = _run(conn, Lake(s3, BUCKET), "pg_stat_activity")
    assert result["rows"] == 1
    assert [row["id"] for row in read_table(s3, "pg_stat_activity")] == [7]


def test_a_table_of_another_schema_is_ingested_when_configured(conn: Any, s3: Any) -> None:
    conn.run("CREATE SCHEMA shop")
    conn.run("CREATE TABLE shop.item (id int PRIMARY KEY, last_updated timestamp)")
    conn.run("INSERT INTO shop.item VALUES (1, now())")
    with pytest.raises(InvalidEvent, match="item: does not exist in schema public"):
        pipeline.start_run({"tables_to_query": ["item"]}, conn, SETTINGS)
    run = pipeline.start_run(
        {"tables_to_query": ["item"]}, conn, pipeline.RunSettings(0, 1, 0, schema="shop")
    )
    assert run["tables"] == ["item"]


def test_a_keyless_table_with_a_wall_clock_cursor_in_a_zone_with_dst_is_refused(
    conn: Any,
) -> None:
    conn.run("CREATE TABLE log (msg text, last_updated timestamp)")
    settings = pipeline.RunSettings(0, 1, 0, source_timezone="Europe/London")
    with pytest.raises(InvalidEvent, match="log: no primary key"):
        pipeline.start_run({"tables_to_query": ["log"]}, conn, settings)
    utc = pipeline.RunSettings(0, 1, 0, source_timezone="UTC")
    assert pipeline.start_run({"tables_to_query": ["log"]}, conn, utc)["tables"] == ["log"]


def _metrics(out: str, name: str) -> list[dict[str, Any]]:
    """The EMF documents of metric ``name`` printed on stdout."""
    found = []
    for line in out.splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            document = json.loads(line)
            if name in document:
                found.append(document)
    return found


def _value(document: dict[str, Any], name: str) -> float:
    value = document[name]
    return float(value[0] if isinstance(value, list) else value)


def test_a_forgotten_begin_is_named_and_freshness_keeps_being_reported(
    items: Any,
    db_settings: dict[str, Any],
    s3: Any,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN a table ingested once, then a psql session left idle in a transaction
    lake = Lake(s3, BUCKET)
    _insert(connect(db_settings), 2)
    _run(items, lake, "item")
    forgotten = connect(db_settings, application_name="psql")
    forgotten.run("BEGIN")
    forgotten.run("SELECT 'secret query text'")
    time.sleep(1.2)
    capsys.readouterr()
    # WHEN the next runs find nothing they may ingest
    settings = pipeline.RunSettings(0, 1, 0, stall_warning_seconds=1)
    run = pipeline.start_run({"tables_to_query": ["item"]}, items, settings)
    item = {
        "table": "item",
        **{k: run[k] for k in ("end_time", "run_id", "source_timezone", "hold")},
    }
    pipeline.stage_table(pipeline.find_watermark(item, lake), items, lake, row_group_rows=100)
    # THEN a WARNING names the session, never its query
    (stall,) = [r for r in caplog.records if r.getMessage().startswith("End bound held back")]
    assert stall.levelname == "WARNING"
    assert stall.application_name == "psql"  # type: ignore[attr-defined]
    assert stall.state == "idle in transaction"  # type: ignore[attr-defined]
    assert stall.open_seconds >= 1  # type: ignore[attr-defined]
    assert "secret query text" not in caplog.text + str(vars(stall))
    # ... and the lag and the table's freshness are measured though nothing was written
    out = capsys.readouterr().out
    (lag,) = _metrics(out, "EndBoundLagSeconds")
    assert _value(lag, "EndBoundLagSeconds") >= 1
    (fresh,) = _metrics(out, "FreshnessSeconds")
    assert fresh["table"] == "item"
    assert _value(fresh, "FreshnessSeconds") >= 1
    forgotten.close()


def test_a_keyless_table_gets_no_overlap_and_says_so(
    conn: Any, s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a table without a primary key whose cursor is an instant
    conn.run("CREATE TABLE log (msg text, last_updated timestamptz NOT NULL DEFAULT now())")
    conn.run("INSERT INTO log (msg) VALUES ('a'), ('b')")
    lake = Lake(s3, BUCKET)
    assert _run(conn, lake, "log")["rows"] == 2
    conn.run("INSERT INTO log (msg) VALUES ('c')")
    # WHEN the next window would re-read the overlap THEN it cannot, and warns
    assert _run(conn, lake, "log")["rows"] == 1
    assert any(r.getMessage() == "No key: no re-read overlap" for r in caplog.records)
    assert sorted(row["msg"] for row in read_table(s3, "log")) == ["a", "b", "c"]


def test_a_source_timezone_postgresql_does_not_know_fails_the_run_at_once(items: Any) -> None:
    settings = pipeline.RunSettings(0, 1, 0, source_timezone="Mars/Olympus_Mons")
    with pytest.raises(InvalidEvent, match="SOURCE_TIMEZONE 'Mars/Olympus_Mons' is not a zone"):
        pipeline.start_run({"tables_to_query": ["item"]}, items, settings)


def test_a_timestamptz_cursor_is_reread_as_instants(
    conn: Any, db_settings: dict[str, Any], s3: Any
) -> None:
    # GIVEN a timestamptz cursor, written by a session in a zone far from UTC
    conn.run(
        "CREATE TABLE item (id serial PRIMARY KEY, v text, "
        "last_updated timestamptz NOT NULL DEFAULT now())"
    )
    writer, lake = connect(db_settings), Lake(s3, BUCKET)
    writer.run("SET TimeZone = 'Asia/Kathmandu'")
    first = _insert(writer, 2)
    assert _run(conn, lake, "item")["rows"] == 2
    late = _write(
        writer, "INSERT INTO item (v, last_updated) VALUES ('late', now() - '20 s'::interval)"
    )
    # THEN the version below the start is re-read once, and nothing else twice
    assert _run(conn, lake, "item")["rows"] == 1
    assert _run(conn, lake, "item")["rows"] == 0
    assert len(read_table(s3, "item")) == len([*first, late])


def test_a_reread_row_the_server_does_not_send_fails_the_window(
    items: Any, db_settings: dict[str, Any], s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a late version to re-read, and a re-read list naming one row more than exists
    # (one connection: the file is reconciled with the rows each COPY sent)
    writer, lake = connect(db_settings), Lake(s3, BUCKET)
    _insert(writer, 3)
    _run(items, lake, "item")
    _write(writer, "INSERT INTO item (v, last_updated) VALUES ('late', now() - '30 s'::interval)")
    found = reread.missing_ctids

    def one_more(*args: Any) -> list[str]:
        ctids = found(*args)
        return [*ctids, re.sub(r"^\(\d+,", "(4000000,", ctids[0])]

    monkeypatch.setattr(reread, "missing_ctids", one_more)
    # WHEN the next run re-reads THEN the window fails instead of committing
    with pytest.raises(ReconciliationError, match=r"wrote 1 rows but the window holds 2"):
        _run(items, lake, "item")
