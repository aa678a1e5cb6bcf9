"""The extract engine against a real PostgreSQL: windows, schema, reconciliation, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pg8000.native
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from totes_ingest import config, copy_stream, parquet_sink
from totes_ingest.catalog import table_schema
from totes_ingest.errors import (
    ReconciliationError,
    SourceError,
    SourceUnavailable,
    UnsupportedColumnType,
)
from totes_ingest.extract import ExtractResult, extract_to_parquet
from totes_ingest.generate_new_entry_query import DateFormatError
from totes_ingest.pg_types import PG_TYPE_KEY

pytestmark = pytest.mark.integration

END = "2030-01-01 00:00:00.000000"


def _items(conn: pg8000.native.Connection, rows: int, *, day: str = "2024-01-01") -> None:
    conn.run(
        "CREATE TABLE IF NOT EXISTS item (item_id serial PRIMARY KEY, name varchar,"
        " price numeric(10, 2), last_updated timestamp NOT NULL)"
    )
    conn.run(
        "INSERT INTO item (name, price, last_updated) SELECT 'item ' || g, g * 1.25,"
        " CAST(:day AS timestamp) + g * interval '1 microsecond'"
        " FROM generate_series(1, CAST(:rows AS int)) AS g",
        day=day,
        rows=rows,
    )


def _extract(
    conn: pg8000.native.Connection,
    path: Path,
    table: str = "item",
    start: str | None = None,
    end: str = END,
    **kwargs: Any,
) -> tuple[ExtractResult, pa.Table]:
    result = extract_to_parquet(conn, table, start, end, path / f"{table}.parquet", **kwargs)
    return result, pq.read_table(path / f"{table}.parquet")


def test_the_window_includes_its_start_and_excludes_its_end(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    _items(conn, 5)  # last_updated = 2024-01-01 00:00:00.000001 ... .000005
    result, table = _extract(
        conn, tmp_path, start="2024-01-01 00:00:00.000002", end="2024-01-01 00:00:00.000004"
    )
    assert result.rows == 2
    assert table.column("item_id").to_pylist() == [2, 3]


def test_no_start_time_extracts_from_the_beginning(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    _items(conn, 5)
    result, table = _extract(conn, tmp_path, start=None, end="2024-01-01 00:00:00.000004")
    assert result.rows == 3
    assert table.column("item_id").to_pylist() == [1, 2, 3]


def test_the_result_reports_rows_file_size_and_schema(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    _items(conn, 3)
    result, table = _extract(conn, tmp_path)
    assert result.rows == table.num_rows == 3
    assert result.bytes == (tmp_path / "item.parquet").stat().st_size
    assert result.schema == table.schema == table_schema(conn, "item")


def test_an_empty_window_writes_a_typed_zero_row_file(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    _items(conn, 3)
    result, table = _extract(conn, tmp_path, start=END, end="2031-01-01 00:00:00")
    assert result.rows == table.num_rows == 0
    assert table.schema == table_schema(conn, "item")
    assert table.schema.field("price").type == pa.decimal128(10, 2)


def test_an_all_null_column_keeps_its_catalog_type(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    _items(conn, 3)
    conn.run("UPDATE item SET price = NULL")
    _, table = _extract(conn, tmp_path)
    assert table.schema.field("price").type == pa.decimal128(10, 2)
    assert table.column("price").null_count == 3


def test_each_field_carries_its_postgresql_type(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    _items(conn, 1)
    _, table = _extract(conn, tmp_path)
    pg_types = {f.name: f.metadata[PG_TYPE_KEY].decode() for f in table.schema}
    assert pg_types == {
        "item_id": "integer",
        "name": "character varying",
        "price": "numeric(10,2)",
        "last_updated": "timestamp without time zone",
    }


def test_row_groups_hold_at_most_row_group_rows(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    _items(conn, 2500)
    result, table = _extract(conn, tmp_path, row_group_rows=1000)
    metadata = pq.ParquetFile(tmp_path / "item.parquet").metadata
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert sizes == [1000, 1000, 500]
    assert table.column("item_id").to_pylist() == list(range(1, 2501))
    assert result.rows == 2500


def test_row_groups_are_also_cut_by_their_bytes(
    conn: pg8000.native.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN wide rows (10 KB each) and a row-group bound of about 100 KB
    monkeypatch.setattr(copy_stream, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(config, "DEFAULT_ROW_GROUP_BYTES", 100_000)
    _items(conn, 800)
    conn.run("UPDATE item SET name = repeat(md5(item_id::text), 320)")
    # WHEN extracted with a row bound they never reach
    result, table = _extract(conn, tmp_path, row_group_rows=100_000)
    # THEN row groups are cut by bytes (the bound plus at most one chunk), every row there
    metadata = pq.ParquetFile(tmp_path / "item.parquet").metadata
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert sum(sizes) == result.rows == 800
    assert len(sizes) >= 4
    assert table.column("item_id").to_pylist() == list(range(1, 801))


def test_every_row_arrives_when_the_copy_spans_many_chunks(
    conn: pg8000.native.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(copy_stream, "CHUNK_BYTES", 4096)  # ~100 rows a chunk
    _items(conn, 20_000)
    result, table = _extract(conn, tmp_path, row_group_rows=3000)
    assert result.rows == 20_000
    assert table.column("item_id").to_pylist() == list(range(1, 20_001))


def test_a_row_larger_than_a_chunk_arrives_whole(
    conn: pg8000.native.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(copy_stream, "CHUNK_BYTES", 4096)
    _items(conn, 3)
    conn.run("UPDATE item SET name = repeat('x,\"y\"' || chr(10), 100000) WHERE item_id = 2")
    _, table = _extract(conn, tmp_path)
    names = {row["item_id"]: row["name"] for row in table.to_pylist()}
    assert names == {1: "item 1", 2: 'x,"y"\n' * 100000, 3: "item 3"}


def test_line_breaks_inside_values_survive_chunking(
    conn: pg8000.native.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN small chunks, some holding values with line breaks and some not
    monkeypatch.setattr(copy_stream, "CHUNK_BYTES", 4096)
    _items(conn, 5000)
    conn.run("UPDATE item SET name = name || chr(13) || chr(10) || 'x' WHERE item_id % 997 = 0")
    conn.run("UPDATE item SET name = chr(13) || name WHERE item_id % 1009 = 0")
    # WHEN extracted THEN every value is exactly the database's
    _, table = _extract(conn, tmp_path)
    expected = dict(conn.run("SELECT item_id, name FROM item"))
    assert {row["item_id"]: row["name"] for row in table.to_pylist()} == expected


def test_notices_raised_mid_copy_lose_no_row(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    # GIVEN a view that interleaves NoticeResponse messages with the rows
    _items(conn, 3000)
    conn.run(
        "CREATE FUNCTION noisy(i int) RETURNS int LANGUAGE plpgsql AS"
        " $$ BEGIN IF i % 100 = 0 THEN RAISE NOTICE 'row %', i; END IF; RETURN i; END $$"
    )
    conn.run("CREATE VIEW noisy_item AS SELECT noisy(item_id) AS id, last_updated FROM item")
    # WHEN it is extracted THEN every row arrives, once
    result, table = _extract(conn, tmp_path, table="noisy_item")
    assert any(b"row 3000" in notice.get(b"M", b"") for notice in conn.notices)
    assert result.rows == 3000
    assert sorted(table.column("id").to_pylist()) == list(range(1, 3001))


class _UnpeekableSocket:
    """A socket file without peek(): the extract must fall back to pg8000's row-by-row."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def read(self, size: int) -> bytes:
        return self._sock.read(size)

    def write(self, data: bytes) -> int:
        return self._sock.write(data)

    def flush(self) -> None:
        self._sock.flush()

    def close(self) -> None:
        self._sock.close()


def test_rows_arrive_one_by_one_when_the_socket_cannot_be_peeked(
    conn: pg8000.native.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conn, "_sock", _UnpeekableSocket(conn._sock))
    monkeypatch.setattr(copy_stream, "CHUNK_BYTES", 4096)
    _items(conn, 2000)
    result, table = _extract(conn, tmp_path)
    assert result.rows == 2000
    assert table.column("item_id").to_pylist() == list(range(1, 2001))


def test_a_connection_inside_a_transaction_is_refused(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    _items(conn, 1)
    conn.run("BEGIN")
    with pytest.raises(ValueError, match="outside any transaction"):
        _extract(conn, tmp_path)
    conn.run("ROLLBACK")


def test_the_row_group_size_defaults_to_the_configured_one(
    conn: pg8000.native.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROW_GROUP_ROWS", "400")
    _items(conn, 1000)
    _extract(conn, tmp_path)
    metadata = pq.ParquetFile(tmp_path / "item.parquet").metadata
    assert metadata.row_group(0).num_rows == 400


def test_the_session_is_left_as_it_was(conn: pg8000.native.Connection, tmp_path: Path) -> None:
    _items(conn, 2)
    conn.run("SET TimeZone = 'America/New_York'")
    conn.run("SET DateStyle = 'SQL, DMY'")
    _extract(conn, tmp_path)
    assert conn.run("SHOW TimeZone") == [["America/New_York"]]
    assert conn.run("SHOW DateStyle") == [["SQL, DMY"]]
    assert conn.run("SELECT count(*) FROM item") == [[2]]  # no transaction left open


def test_a_missing_table_raises_source_error(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    with pytest.raises(SourceError, match=r"does not exist.*table=nowhere"):
        _extract(conn, tmp_path, table="nowhere")


def test_a_table_without_last_updated_raises_source_error(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    conn.run("CREATE TABLE plain (id int)")
    with pytest.raises(SourceError, match=r"last_updated.*table=plain"):
        _extract(conn, tmp_path, table="plain")


def test_a_malformed_window_bound_is_refused_before_any_query(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    _items(conn, 1)
    with pytest.raises(DateFormatError):
        _extract(conn, tmp_path, start="2024-01-01'; DROP TABLE item; --")
    assert conn.run("SELECT count(*) FROM item") == [[1]]


def test_an_unmappable_column_type_names_the_table_and_column(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    conn.run("CREATE TABLE odd (id int, opened money, last_updated timestamp)")
    with pytest.raises(UnsupportedColumnType, match=r"'opened'.*money.*table=odd"):
        _extract(conn, tmp_path, table="odd")


def test_a_failure_mid_copy_raises_source_error_and_removes_the_file(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    # GIVEN a view whose 4000th row fails only once rows are already streaming
    _items(conn, 5000)
    conn.run("CREATE VIEW fragile AS SELECT 1 / (item_id - 4000) AS x, last_updated FROM item")
    # WHEN it is extracted THEN the server's error surfaces and no file is left
    with pytest.raises(SourceError, match=r"division by zero.*table=fragile.*window="):
        _extract(conn, tmp_path, table="fragile")
    assert not (tmp_path / "fragile.parquet").exists()
    # AND the connection is still usable, outside any transaction
    assert conn.run("SELECT count(*) FROM item") == [[5000]]


def test_a_dropped_connection_raises_source_unavailable(
    conn: pg8000.native.Connection, db_settings: dict[str, Any], tmp_path: Path
) -> None:
    _items(conn, 10)
    victim = pg8000.native.Connection(**{k: v for k, v in db_settings.items() if v != ""})
    ((pid,),) = victim.run("SELECT pg_backend_pid()")
    conn.run("SELECT pg_terminate_backend(CAST(:pid AS int))", pid=pid)
    with pytest.raises(SourceUnavailable, match="table=item"):
        _extract(victim, tmp_path)


def test_rows_lost_between_count_and_file_raise_reconciliation_error(
    conn: pg8000.native.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a sink that silently loses the first row of every batch
    decoded = parquet_sink.ParquetSink._decoded

    def lossy(self: Any, chunk: Any) -> pa.RecordBatch:
        return decoded(self, chunk).slice(1)

    monkeypatch.setattr(parquet_sink.ParquetSink, "_decoded", lossy)
    _items(conn, 10)
    # WHEN the window is extracted THEN the count disagrees with the file
    with pytest.raises(ReconciliationError, match=r"wrote 9 rows.*holds 10.*table=item"):
        _extract(conn, tmp_path)
    assert not (tmp_path / "item.parquet").exists()
