"""One table's window of rows to a Parquet file: the snapshot and its reconciliation.

The public face of the extract. Inside one REPEATABLE READ, READ ONLY transaction it
reads the table's columns from the catalog, streams ``COPY (SELECT ...) TO STDOUT (FORMAT
binary)`` into the Parquet sink, and counts the window in the same snapshot: a file
holding a different number of rows is a ReconciliationError. The pieces live in their
own modules:

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pg8000.native

from totes_ingest import config
from totes_ingest.errors import ReconciliationError, SourceUnavailable
from totes_ingest.generate_new_entry_query import window_predicate
from totes_ingest.identifiers import quote_ident

if TYPE_CHECKING:
    import pyarrow as pa

# The session settings the text of ``::text`` casts may depend on, fixed for the
# transaction (SET LOCAL); the binary forms depend on none.
SESSION_SETTINGS = (
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL DateStyle = 'ISO, YMD'",
    "SET LOCAL IntervalStyle = 'postgres'",
    "SET LOCAL extra_float_digits = 3",
    "SET LOCAL bytea_output = 'hex'",
)
_SRC = "_totes_src"


@dataclass(frozen=True)
class ExtractResult:
    """What was written: row count, Parquet file size in bytes, and its schema."""

    rows: int
    bytes: int
    schema: pa.Schema


def extract_to_parquet(
    conn: pg8000.native.Connection,
    table: str,
    start_time: str | None,
    end_time: str,
    path: pathlib.Path,
    *,
    row_group_rows: int | None = None,
) -> ExtractResult:
    """Write the rows of ``table`` with ``last_updated`` in ``[start_time, end_time)`` to
    ``path`` as Parquet, schema from the catalog; ``start_time=None`` is from the start.

    ``conn`` must not be inside a transaction: the extract runs its own read-only
    snapshot and leaves the session as it found it. On any error the file is removed.
    """
    # Imported here, not above: a step that writes no Parquet imports this module through
    # the pipeline, and so loads neither pyarrow nor numpy (tests/unit/test_cold_start.py).
    from totes_ingest.catalog import table_columns
    from totes_ingest.copy_stream import in_transaction, widen_read_buffer
    from totes_ingest.parquet_sink import ParquetSink
    from totes_ingest.pg_types import plan, schema_of

    window = f"[{start_time}, {end_time})"
    predicate = window_predicate(start_time, end_time, table=table)
    group_rows = row_group_rows or config.row_group_rows()
    if group_rows < 1:
        raise ValueError(f"row_group_rows must be positive, not {group_rows}")
    if in_transaction(conn):
        raise ValueError("extract_to_parquet needs a connection outside any transaction")
    db = _Db(conn, table, window)
    try:
        db.run(
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; "
            + "; ".join(SESSION_SETTINGS)
        )
        columns = table_columns(conn, table, window=window)
        schema = schema_of(columns)
        source = f"{quote_ident(table)} AS {_SRC} WHERE {predicate}"
        plans = [plan(column, f"{_SRC}.{quote_ident(column.name)}") for column in columns]
        select = ", ".join(plan.expr for plan in plans)
        copy_sql = f"COPY (SELECT {select} FROM {source}) TO STDOUT (FORMAT binary)"  # nosec B608
        widen_read_buffer(conn)
        sink = ParquetSink(conn, path, schema, plans, group_rows, table, window)
        written, ((counted,),) = sink.run(
            lambda stream: db.run(copy_sql, stream=stream),
            # the same snapshot, counted while the writer thread finishes the file
            then=lambda: db.run(f"SELECT count(*) FROM {source}"),  # nosec B608
        )
        db.run("COMMIT")
        if written != counted:
            raise ReconciliationError(
                f"wrote {written} rows but the window holds {counted}",
                table=table,
                window=window,
            )
    except BaseException:
        db.rollback_quietly()
        path.unlink(missing_ok=True)
        raise
    return ExtractResult(rows=written, bytes=path.stat().st_size, schema=schema)


class _Db:
    """Runs statements, translating driver errors into the project's errors."""

    def __init__(self, conn: pg8000.native.Connection, table: str, window: str) -> None:
        self.conn = conn
        self.table = table
        self.window = window

    def run(self, sql: str, **kwargs: Any) -> Any:
        try:
            return self.conn.run(sql, **kwargs)
        except pg8000.exceptions.DatabaseError as e:
            # imported here: db_connections brings boto3, which the extract needs not
            from totes_ingest.db_connections import as_source_error

            raise as_source_error(e, "extract", table=self.table, window=self.window) from e
        except (pg8000.exceptions.InterfaceError, OSError) as e:
            raise SourceUnavailable(
                f"connection lost during extract: {type(e).__name__}",
                table=self.table,
                window=self.window,
            ) from e

    def rollback_quietly(self) -> None:
        """End the transaction if the connection is still usable; a dead one is left be."""
        with contextlib.suppress(pg8000.exceptions.Error, OSError):
            self.conn.run("ROLLBACK")
