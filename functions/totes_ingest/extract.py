"""One table's window of rows to a Parquet file: the snapshot and its reconciliation.

The public face of the extract. Inside one REPEATABLE READ, READ ONLY transaction it
reads the table's columns from the catalog, streams ``COPY (SELECT ...) TO STDOUT (FORMAT
binary)`` of the window's cursor range (and of the re-read rows the lake lacks, by ctid,
into the same file) through the Parquet sink, and reconciles the file with the window:
a file holding a different number of rows than the server sent (its own count of each
COPY's rows) or, read on several connections, than a ``count(*)`` of the window in the
same snapshot finds, is a ReconciliationError. The pieces live in their own modules:

- ``pg_types``: the type mapping (each column's SELECT expression and decoding);
- ``catalog``: a table's columns, read from the catalog;
- ``pg_binary``: PostgreSQL's binary COPY format, decoded with numpy;
- ``copy_stream``: the COPY fast path, the only code relying on pg8000's internals;
- ``parquet_sink``: the writer thread, chunks of tuples to Parquet row groups.

A value with no faithful Arrow form (NaN in numeric(p, s), an infinite or BC date, time
24:00:00) raises UnsupportedColumnType naming the table and the column.
"""

from __future__ import annotations

import contextlib
import pathlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pg8000.native

from totes_ingest import config
from totes_ingest.config import TypeProfile as Profile
from totes_ingest.cursor import CursorRange
from totes_ingest.db_errors import source_errors
from totes_ingest.errors import IngestError, ReconciliationError, SourceError
from totes_ingest.format_time import parse_time
from totes_ingest.generate_new_entry_query import validated_time
from totes_ingest.identifiers import quote_ident
from totes_ingest.source import CURSOR_COLUMN, SourceTable, resolve_table
from totes_ingest.window import Window

if TYPE_CHECKING:
    import pyarrow as pa

    from totes_ingest.copy_stream import CopyStream

# The session settings the text of ``::text`` casts may depend on, fixed for the
# transaction (SET LOCAL); the binary forms depend on none.
SESSION_SETTINGS = (
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL DateStyle = 'ISO, YMD'",
    "SET LOCAL IntervalStyle = 'postgres'",
    "SET LOCAL extra_float_digits = 3",
    "SET LOCAL bytea_output = 'hex'",
    # The snapshot may wait, idle, while the lake's versions of the re-read overlap are
    # read (seconds for a large newest file): a server's idle_in_transaction_session_timeout
    # would end the session every retry, and the table would never advance.
    "SET LOCAL idle_in_transaction_session_timeout = 0",
)
_SRC = "_totes_src"
_BEGIN = "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; "
# Relations stored as a heap of blocks (tables, materialized views): ctid ranges split them.
_HEAP_KINDS = ("r", "m")
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")

Connect = Callable[[], pg8000.native.Connection]


@dataclass(frozen=True)
class ExtractResult:
    """What was written: row count, Parquet file size in bytes, and its schema."""

    rows: int
    bytes: int
    schema: pa.Schema
    reread: int = 0  # of which rows came from the re-read range


def extract_to_parquet(
    conn: pg8000.native.Connection,
    table: str,
    start_time: str | None,
    end_time: str,
    path: pathlib.Path,
    *,
    row_group_rows: int | None = None,
    type_profile: Profile = "portable",
    connections: int = 1,
    connect: Connect | None = None,
) -> ExtractResult:
    """Write the rows of ``public.table`` with ``last_updated`` in ``[start_time, end_time)``
    to ``path`` as Parquet, schema from the catalog; ``start_time=None`` is from the start.
    ``connections`` and ``connect``: as :func:`extract_window`'s.

    The bounds are cursor values, compared as the column's own values (no re-read
    overlap): the pipeline itself calls :func:`extract_window`.
    """
    start = None if start_time is None else parse_time(validated_time(start_time, table=table))
    end = parse_time(validated_time(end_time, table=table))
    source = resolve_table(conn, table, "public", views=True)
    window = Window(table=table, run_id="extract", start=start, end=end)
    return extract_window(
        conn,
        window.with_cursor(CursorRange(start, end)),
        source,
        path,
        row_group_rows=row_group_rows,
        type_profile=type_profile,
        connections=connections,
        connect=connect,
    )


def extract_window(
    conn: pg8000.native.Connection,
    window: Window,
    source: SourceTable,
    path: pathlib.Path,
    *,
    row_group_rows: int | None = None,
    in_lake: Callable[[], pa.Table] | None = None,
    type_profile: Profile = "portable",
    connections: int = 1,
    connect: Connect | None = None,
) -> ExtractResult:
    """Write the rows of ``window``'s cursor range to ``path`` as Parquet.

    Every row of the range ``[start, end)``; of its re-read range, the rows whose (key,
    cursor) pair the lake does not hold: ``in_lake`` reads them (``reread.lake_versions``),
    only if the re-read range holds rows. Both ranges are read,
    and counted, in one snapshot. ``conn`` must not be inside a transaction: the extract
    runs its own read-only snapshot and leaves the session as it found it. On any error
    the file is removed. ``type_profile`` picks the type mapping (``pg_types``).

    With ``connections`` > 1, ``connect`` opens that many less one more connections,
    which import ``conn``'s snapshot (``pg_export_snapshot``) and each COPY a disjoint
    ctid range of the table's blocks into the same file; they are closed before this
    returns. A partitioned table or a view has no ctid ranges: one connection reads it.
    """
    # Imported here, not above: a step that writes no Parquet imports this module through
    # the pipeline, and so loads neither pyarrow nor numpy (tests/unit/test_cold_start.py).
    from totes_ingest.catalog import table_columns
    from totes_ingest.copy_stream import in_transaction, widen_read_buffer
    from totes_ingest.parquet_sink import ParquetSink
    from totes_ingest.pg_types import plan, schema_of

    table, label = window.table, window.label
    if window.cursor is None:
        raise ValueError(f"window {label} of {table} has no cursor range")
    group_rows = row_group_rows or config.row_group_rows()
    if group_rows < 1:
        raise ValueError(f"row_group_rows must be positive, not {group_rows}")
    if in_transaction(conn):
        raise ValueError("extract_to_parquet needs a connection outside any transaction")
    if connections < 1:
        raise ValueError(f"connections must be at least 1, not {connections}")
    cursor = f"{_SRC}.{quote_ident(CURSOR_COLUMN)}"
    db = _Db(conn, table, label)
    others: list[_Db] = []
    try:
        db.run(_BEGIN + "; ".join(SESSION_SETTINGS))
        columns = table_columns(
            conn, table, window=label, relation=source.relation, profile=type_profile
        )
        schema = schema_of(columns)
        plans = [plan(column, f"{_SRC}.{quote_ident(column.name)}") for column in columns]
        select = ", ".join(p.expr for p in plans)
        rows_of = f"SELECT {select} FROM {source.relation} AS {_SRC} WHERE "  # nosec B608
        predicate = window.cursor.predicate(source, cursor)
        ranges = _block_ranges(db, source, connections if connect else 1)
        if len(ranges) > 1 and connect is not None:
            others = _import_snapshot(db, connect, len(ranges) - 1)
        copies = [
            [f"COPY ({rows_of}{_within(block, predicate)}) TO STDOUT (FORMAT binary)"]
            for block in ranges
        ]
        extra = _reread(db, window.cursor, source, schema, in_lake)
        if extra:
            from totes_ingest.reread import ctid_predicate  # only then: it imports boto3

            copies[0].append(  # on the first connection, after its range
                f"COPY ({rows_of}{ctid_predicate(extra, _SRC)}) TO STDOUT (FORMAT binary)"
            )
        readers = (db, *others)
        for each in readers:
            widen_read_buffer(each.conn)
        sink = ParquetSink(conn, path, schema, plans, group_rows, table, label)
        count = f"SELECT count(*) FROM {source.relation} AS {_SRC} WHERE {predicate}"  # nosec B608
        sent: list[int] = []  # rows each COPY sent, by the server's count (its command tag)
        written, counts = sink.run_parallel(
            [
                (each.conn, each.copier(sqls, sent if each is db else None))
                for each, sqls in zip(readers, copies, strict=True)
            ],
            # Several ctid ranges: the same snapshot counted (while the writer thread
            # finishes the file), which checks that the ranges cover the table.
            then=lambda: db.run(count) if others else None,
        )
        for each in (*others, db):
            each.run("COMMIT")
        # One COPY of the window: the server's own count of the rows it sent.
        counted = int(counts[0][0]) if others else sent[0]
        counted += len(extra)
        if written != counted:
            raise ReconciliationError(
                f"wrote {written} rows but the window holds {counted}",
                table=table,
                window=label,
            )
    except BaseException:
        db.rollback_quietly()
        path.unlink(missing_ok=True)
        raise
    finally:
        for other in others:
            other.close_quietly()
    return ExtractResult(rows=written, bytes=path.stat().st_size, schema=schema, reread=len(extra))


def extract_rows(
    conn: pg8000.native.Connection,
    source: SourceTable,
    predicate: str,
    path: pathlib.Path,
    *,
    label: str,
    row_group_rows: int | None = None,
) -> ExtractResult:
    """Write the rows of ``source`` matching ``predicate`` (over the columns of the table,
    aliased as the extract aliases them) to ``path``, inside the caller's transaction.

    The same columns, expressions, decoding and Parquet writer as :func:`extract_window`,
    so the file is bit for bit what a window holding those rows would hold. The caller
    owns the snapshot (the audit repairs the versions it found missing in its own) and
    has applied :data:`SESSION_SETTINGS`. On any error the file is removed.
    """
    from totes_ingest.catalog import table_columns
    from totes_ingest.copy_stream import widen_read_buffer
    from totes_ingest.parquet_sink import ParquetSink
    from totes_ingest.pg_types import plan, schema_of

    db = _Db(conn, source.name, label)
    try:
        columns = table_columns(
            conn, source.name, window=label, relation=source.relation, profile=config.type_profile()
        )
        schema = schema_of(columns)
        plans = [plan(column, f"{_SRC}.{quote_ident(column.name)}") for column in columns]
        select = ", ".join(p.expr for p in plans)
        copy = (
            f"COPY (SELECT {select} FROM {source.relation} AS {_SRC} "  # nosec B608
            f"WHERE {predicate}) TO STDOUT (FORMAT binary)"
        )
        widen_read_buffer(conn)
        sink = ParquetSink(
            conn, path, schema, plans, row_group_rows or config.row_group_rows(), source.name, label
        )
        written, _ = sink.run(lambda stream: db.run(copy, stream=stream), then=lambda: None)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return ExtractResult(rows=written, bytes=path.stat().st_size, schema=schema)


def source_alias() -> str:
    """The alias :func:`extract_rows` gives the table in its predicate's scope."""
    return _SRC


def _block_ranges(db: _Db, source: SourceTable, connections: int) -> list[str | None]:
    """The ctid predicates of ``connections`` disjoint ranges of the table's blocks that
    together cover it (``[None]``: the whole table, one connection).

    The size is read in the snapshot, but a relation only grows while it is read: the
    last range is open-ended, so a block added since is still covered (its rows are not
    in the snapshot anyway). Ranges are whole blocks, so the server runs TID Range Scans
    (PostgreSQL 14+; older servers filter a sequential scan, still exact).
    """
    if connections == 1:
        return [None]
    ((kind, blocks),) = db.run(
        "SELECT c.relkind::text, pg_relation_size(c.oid) / current_setting('block_size')::int8"
        " FROM pg_catalog.pg_class AS c WHERE c.oid = :oid",
        oid=source.oid,
    )
    if kind not in _HEAP_KINDS:
        from totes_ingest.observability import logger  # only here: Powertools' import

        logger.info(
            "No ctid ranges: one connection",
            extra={"table": source.name, "relkind": kind, "window": db.window},
        )
        return [None]
    count = min(connections, int(blocks))
    if count <= 1:
        return [None]
    bounds = [int(blocks) * i // count for i in range(1, count)]
    lower = [f"{_SRC}.ctid >= '({b},0)'::tid" for b in bounds]
    upper = [f"{_SRC}.ctid < '({b},0)'::tid" for b in bounds]
    return [upper[0], *(f"{a} AND {b}" for a, b in zip(lower, upper[1:], strict=False)), lower[-1]]


def _within(block: str | None, predicate: str) -> str:
    return predicate if block is None else f"{block} AND ({predicate})"


def _import_snapshot(db: _Db, connect: Connect, count: int) -> list[_Db]:
    """``count`` more connections inside ``db``'s snapshot (exported, then imported).

    On any error the ones opened so far are closed.
    """
    ((snapshot,),) = db.run("SELECT pg_export_snapshot()")
    if not _SNAPSHOT_ID.fullmatch(str(snapshot)):  # interpolated: SET takes no parameters
        raise SourceError(f"unexpected snapshot id {snapshot!r}", table=db.table, window=db.window)
    others: list[_Db] = []
    try:
        for _ in range(count):
            other = _Db(_connected(connect, db.table, db.window), db.table, db.window)
            others.append(other)
            other.run(
                f"{_BEGIN}SET TRANSACTION SNAPSHOT '{snapshot}'; " + "; ".join(SESSION_SETTINGS)
            )
    except BaseException:
        for other in others:
            other.close_quietly()
        raise
    return others


def _connected(connect: Connect, table: str, window: str) -> pg8000.native.Connection:
    try:
        return connect()
    except IngestError as e:
        raise type(e)(f"extra extract connection: {e}", table=table, window=window) from e


def _reread(
    db: _Db,
    cursor: CursorRange,
    source: SourceTable,
    schema: pa.Schema,
    in_lake: Callable[[], pa.Table] | None,
) -> list[str]:
    """The ``ctid`` of the re-read range's rows the lake does not hold (in the snapshot)."""
    predicate = cursor.reread_predicate(source, quote_ident(CURSOR_COLUMN))
    if predicate is None or not source.key:
        return []
    if in_lake is None:
        raise ValueError("a window with a re-read range needs the lake's versions")
    from totes_ingest.reread import missing_ctids, pairs_query  # only now: they import boto3

    ((pairs,),) = db.run(pairs_query(source, predicate))
    if not pairs:  # nothing in the re-read range: the lake's versions are not read
        return []
    return missing_ctids(pairs.encode(), source, in_lake(), schema.field(CURSOR_COLUMN).type)


class _Db:
    """Runs statements, translating driver errors into the project's errors."""

    def __init__(self, conn: pg8000.native.Connection, table: str, window: str) -> None:
        self.conn = conn
        self.table = table
        self.window = window

    def run(self, sql: str, **kwargs: Any) -> Any:
        with source_errors("extract", table=self.table, window=self.window):
            return self.conn.run(sql, **kwargs)

    def copier(self, sqls: list[str], sent: list[int] | None) -> Callable[[CopyStream], object]:
        """Run ``sqls`` (COPY statements) into the stream, one after another; append to
        ``sent`` (if given) how many rows each sent, as the server counted them."""

        def copy(stream: CopyStream) -> None:
            for sql in sqls:
                self.run(sql, stream=stream)
                if sent is not None:
                    sent.append(int(self.conn.row_count))

        return copy

    def close_quietly(self) -> None:
        """Close the connection (an extra one the extract opened), whatever its state."""
        with contextlib.suppress(pg8000.exceptions.Error, OSError):
            self.conn.close()

    def rollback_quietly(self) -> None:
        """End the transaction if the connection is still usable; a dead one is left be."""
        with contextlib.suppress(pg8000.exceptions.Error, OSError):
            self.conn.run("ROLLBACK")
