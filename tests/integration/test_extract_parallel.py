"""Parallel reads inside one extract (EXTRACT_CONNECTIONS): ctid ranges on connections
sharing one exported snapshot, into one file equal to the one-connection file."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pg8000.native
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import BUCKET
from tests.lambda_context import EVENTS, Context
from totes_ingest import config, copy_stream, extract, parquet_sink
from totes_ingest.db_connections import connect_to_db
from totes_ingest.errors import ReconciliationError, SourceError, SourceUnavailable
from totes_ingest.extract import ExtractResult, extract_to_parquet
from totes_ingest.handlers import query_to_parquet
from totes_ingest.local.dburl import Connect
from totes_ingest.local.seed import seed

pytestmark = pytest.mark.integration

EXTRA = "totes-extract-extra"  # application_name of the extra connections
ROWS = 20_000
# The window: rows 1,001 to 18,999 of the 20,000 (the cursor is one second a row).
START = "2024-01-01 00:16:41.000000"
END = "2024-01-01 05:16:40.000000"
LATER = "2030-01-01 00:00:00"  # after every row


def _items(conn: pg8000.native.Connection, rows: int = ROWS) -> None:
    """``rows`` rows of about 150 bytes: several hundred blocks."""
    conn.run(
        "CREATE TABLE item (item_id int PRIMARY KEY, name varchar, price numeric(10, 2),"
        " last_updated timestamp NOT NULL)"
    )
    conn.run(
        "INSERT INTO item SELECT g, 'item ' || g || repeat('x', 120), g * 1.25,"
        " timestamp '2024-01-01' + g * interval '1 second'"
        " FROM generate_series(1, CAST(:rows AS int)) AS g",
        rows=rows,
    )


class Opener:
    """The ``connect`` callable the extract gets: opens tagged connections, keeps them."""

    def __init__(
        self, connect: Connect, settings: dict[str, Any], before: Callable[[], None] | None = None
    ) -> None:
        self.connect = connect
        self.settings = settings
        self.before = before
        self.opened: list[pg8000.native.Connection] = []

    def __call__(self) -> pg8000.native.Connection:
        if self.before is not None:
            self.before()
        conn = self.connect(self.settings, application_name=EXTRA)
        self.opened.append(conn)
        return conn


def _extract(
    conn: pg8000.native.Connection,
    path: Path,
    connections: int = 1,
    opener: Opener | None = None,
    table: str = "item",
    start: str | None = START,
    end: str = END,
) -> tuple[ExtractResult, pa.Table]:
    out = path / f"{table}-{connections}.parquet"
    result = extract_to_parquet(
        conn, table, start, end, out, connections=connections, connect=opener
    )
    return result, pq.read_table(out)


def _extras_open(conn: pg8000.native.Connection, timeout: float = 10.0) -> int:
    """Extra connections still open (a closed one's backend may take a moment to exit)."""
    deadline = time.monotonic() + timeout
    while True:
        ((count,),) = conn.run(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name", name=EXTRA
        )
        if count == 0 or time.monotonic() > deadline:
            return int(count)
        time.sleep(0.05)


def _by_key(table: pa.Table, key: str = "item_id") -> pa.Table:
    return table.sort_by(key)


@pytest.mark.parametrize("connections", [2, 3])
def test_n_connections_write_the_rows_one_connection_writes(
    conn: pg8000.native.Connection,
    db_settings: dict[str, Any],
    connect: Connect,
    tmp_path: Path,
    connections: int,
) -> None:
    # GIVEN a table of several hundred blocks and a window that excludes rows at both ends
    _items(conn)
    ((blocks,),) = conn.run("SELECT pg_relation_size('item') / 8192")
    assert blocks > 100
    _, one = _extract(conn, tmp_path)
    opener = Opener(connect, db_settings)
    # WHEN it is extracted on N connections
    result, many = _extract(conn, tmp_path, connections, opener)
    # THEN N-1 extra connections were opened, and closed again
    assert len(opener.opened) == connections - 1
    assert _extras_open(conn) == 0
    # AND the file holds the window's rows, row for row those of one connection
    assert result.rows == one.num_rows == ROWS - 1000 - 1001
    assert many.schema == one.schema
    assert _by_key(many).equals(_by_key(one))


def test_every_range_holds_rows_of_the_file(
    conn: pg8000.native.Connection, db_settings: dict[str, Any], connect: Connect, tmp_path: Path
) -> None:
    # GIVEN a table spanning blocks; WHEN it is read on 3 connections, whole
    _items(conn)
    _, table = _extract(conn, tmp_path, 3, Opener(connect, db_settings), start=None, end=LATER)
    # THEN every row is there once: the ranges are disjoint and cover the table
    ids = table.column("item_id").to_pylist()
    assert sorted(ids) == list(range(1, ROWS + 1))


def test_a_writer_committing_during_the_extract_does_not_leak_into_the_file(
    conn: pg8000.native.Connection, db_settings: dict[str, Any], connect: Connect, tmp_path: Path
) -> None:
    # GIVEN the file one connection writes before any change
    _items(conn)
    _, before = _extract(conn, tmp_path)
    writer = connect(db_settings)
    committed: list[bool] = []

    def commit_changes() -> None:  # after the snapshot is exported, before it is imported
        if committed:
            return
        committed.append(True)
        writer.run(
            "INSERT INTO item SELECT g, 'new', 1, timestamp '2024-01-01' + g * interval '1 ms'"
            " FROM generate_series(ROWS_FROM + 1, ROWS_FROM + 5000) AS g".replace(
                "ROWS_FROM", str(ROWS)
            )
        )
        writer.run("UPDATE item SET name = 'changed' WHERE item_id % 7 = 0")
        writer.run("DELETE FROM item WHERE item_id % 11 = 0")

    # WHEN the extract on 3 connections runs while the writer commits
    try:
        result, during = _extract(
            conn, tmp_path, 3, Opener(connect, db_settings, before=commit_changes)
        )
    finally:
        writer.close()
    # THEN the file is the snapshot's: none of the writer's rows, and the count agrees
    assert result.rows == before.num_rows
    assert _by_key(during).equals(_by_key(before))
    # AND the changes were committed (the next extract sees them)
    assert conn.run("SELECT count(*) FROM item WHERE name = 'changed'") != [[0]]


def _assert_unreconciled(conn: pg8000.native.Connection, path: Path, opener: Opener) -> None:
    """The window of ``_items`` read on 2 connections fails its count, leaving no file and
    no extra connection open."""
    with pytest.raises(ReconciliationError, match=r"wrote \d+ rows.*holds 17999.*table=item"):
        _extract(conn, path, 2, opener)
    assert not (path / "item-2.parquet").exists()
    assert _extras_open(conn) == 0


def test_rows_lost_on_parallel_reads_still_raise_reconciliation_error(
    conn: pg8000.native.Connection,
    db_settings: dict[str, Any],
    connect: Connect,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a sink that silently loses the first row of every batch
    decoded = parquet_sink.ParquetSink._decoded

    def lossy(self: Any, chunk: Any) -> pa.RecordBatch:
        return decoded(self, chunk).slice(1)

    monkeypatch.setattr(parquet_sink.ParquetSink, "_decoded", lossy)
    _items(conn)
    # WHEN the window is read on 2 connections THEN the count disagrees with the file
    _assert_unreconciled(conn, tmp_path, Opener(connect, db_settings))


def test_ranges_that_miss_blocks_raise_reconciliation_error(
    conn: pg8000.native.Connection,
    db_settings: dict[str, Any],
    connect: Connect,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN ctid ranges with a gap: blocks 100-109, rows of the window, are in none of
    # them (each COPY sends all of its own range's rows: only the window's count shows it)
    block_ranges = extract._block_ranges
    ctid = f"{extract.source_alias()}.ctid"

    def with_a_gap(*args: Any) -> list[str | None]:
        first, *rest = block_ranges(*args)
        gap = f"NOT ({ctid} >= '(100,0)'::tid AND {ctid} < '(110,0)'::tid)"
        return [f"{first} AND {gap}", *rest]

    monkeypatch.setattr(extract, "_block_ranges", with_a_gap)
    _items(conn)
    # WHEN the window is read on 2 connections THEN the count disagrees with the file
    _assert_unreconciled(conn, tmp_path, Opener(connect, db_settings))


def test_a_partitioned_table_is_read_on_one_connection(
    conn: pg8000.native.Connection,
    db_settings: dict[str, Any],
    connect: Connect,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN a partitioned table (no ctid ranges over the parent)
    conn.run(
        "CREATE TABLE part (id int, last_updated timestamp NOT NULL)"
        " PARTITION BY RANGE (last_updated)"
    )
    conn.run("CREATE TABLE part_a PARTITION OF part FOR VALUES FROM (MINVALUE) TO ('2024-06-01')")
    conn.run("CREATE TABLE part_b PARTITION OF part FOR VALUES FROM ('2024-06-01') TO (MAXVALUE)")
    conn.run(
        "INSERT INTO part SELECT g, timestamp '2024-01-01' + g * interval '1 hour'"
        " FROM generate_series(1, 10000) AS g"
    )
    opener = Opener(connect, db_settings)
    # WHEN it is extracted with 3 connections configured
    result, table = _extract(conn, tmp_path, 3, opener, table="part", start=None, end=LATER)
    # THEN no extra connection was opened and every row is there
    assert opener.opened == []
    assert "No ctid ranges: one connection" in [r.getMessage() for r in caplog.records]
    assert result.rows == 10000
    assert sorted(table.column("id").to_pylist()) == list(range(1, 10001))


def test_a_view_is_read_on_one_connection(
    conn: pg8000.native.Connection, db_settings: dict[str, Any], connect: Connect, tmp_path: Path
) -> None:
    _items(conn)
    conn.run("CREATE VIEW item_view AS SELECT * FROM item")
    opener = Opener(connect, db_settings)
    result, _ = _extract(conn, tmp_path, 2, opener, table="item_view")
    assert opener.opened == []
    assert result.rows == ROWS - 1000 - 1001


def test_a_small_table_needs_no_extra_connection(
    conn: pg8000.native.Connection, db_settings: dict[str, Any], connect: Connect, tmp_path: Path
) -> None:
    _items(conn, rows=10)  # one block: one range
    opener = Opener(connect, db_settings)
    result, _ = _extract(conn, tmp_path, 4, opener, start=None, end=LATER)
    assert opener.opened == []
    assert result.rows == 10


def test_an_extra_connections_failing_copy_names_the_window_and_closes_every_extra(
    conn: pg8000.native.Connection, db_settings: dict[str, Any], connect: Connect, tmp_path: Path
) -> None:
    # GIVEN extra connections whose COPY fails on the server
    _items(conn)
    opener = Opener(_failing_copy, db_settings)
    # WHEN the extract reads on 3 connections THEN the server's error names table and window
    with pytest.raises(SourceError, match=r"division by zero.*table=item.*window="):
        _extract(conn, tmp_path, 3, opener)
    # AND every extra connection is closed, no file is left
    assert len(opener.opened) == 2
    assert _extras_open(conn) == 0
    assert not (tmp_path / "item-3.parquet").exists()
    # AND the first connection is usable, outside any transaction
    assert not copy_stream.in_transaction(conn)
    assert conn.run("SELECT count(*) FROM item") == [[ROWS]]


class _FailingCopy(pg8000.native.Connection):  # type: ignore[misc]
    """A connection whose COPY statements fail on the server."""

    def run(self, sql: str, **kwargs: Any) -> Any:
        if sql.startswith("COPY"):
            kwargs.pop("stream", None)
            sql = "SELECT 1 / 0"
        return super().run(sql, **kwargs)


def _failing_copy(settings: dict[str, Any], **options: Any) -> pg8000.native.Connection:
    return _FailingCopy(**{k: v for k, v in settings.items() if k != "password" or v}, **options)


def test_a_failure_to_open_an_extra_connection_closes_the_ones_opened(
    conn: pg8000.native.Connection, db_settings: dict[str, Any], connect: Connect, tmp_path: Path
) -> None:
    # GIVEN a connect that opens one connection, then finds the server unreachable
    _items(conn)
    opener = Opener(connect, db_settings)

    def second_fails() -> None:
        if opener.opened:
            raise SourceUnavailable("cannot connect to 127.0.0.1:1: refused")

    opener.before = second_fails
    # WHEN the extract asks for 3 connections THEN the error names the table and window
    with pytest.raises(SourceUnavailable, match=r"extra extract connection.*table=item.*window="):
        _extract(conn, tmp_path, 3, opener)
    # AND the one extra connection opened is closed again
    assert len(opener.opened) == 1
    assert _extras_open(conn) == 0
    assert conn.run("SELECT count(*) FROM item") == [[ROWS]]


def test_query_to_parquet_reads_on_the_configured_connections(
    db_secret: dict[str, Any], s3: Any, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the seeded source and EXTRACT_CONNECTIONS 3 for QueryToParquet
    conn = connect(db_secret)
    seed(conn, scale=1)
    conn.close()
    event = json.loads((EVENTS / "query_to_parquet.json").read_text())
    opened: list[object] = []

    def counted() -> pg8000.native.Connection:
        opened.append(True)
        return connect_to_db()

    monkeypatch.setattr(query_to_parquet, "connect_to_db", counted)
    one = query_to_parquet.lambda_handler(event, Context())
    monkeypatch.setenv(config.EXTRACT_CONNECTIONS, "3")
    opened.clear()
    # (a staged window would be reused, not read again: this one is gone)
    s3.delete_object(Bucket=BUCKET, Key=one["staging_key"])
    # WHEN the handler stages the same window again
    three = query_to_parquet.lambda_handler(event, Context())
    # THEN it opened its two extra connections, and staged the same rows
    assert len(opened) == 3
    assert three["rows"] == one["rows"] > 0
    assert three["staging_key"] == one["staging_key"]
