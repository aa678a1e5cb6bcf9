"""One table's window of rows to a Parquet file, streamed.

The rows travel as ``COPY (SELECT ...) TO STDOUT (FORMAT csv)`` through pg8000, are
gathered into chunks of whole rows (a few MB), and a second thread parses each chunk
with pyarrow's CSV reader (typed by the catalog schema, never inferred) and writes
Parquet row groups. No Python object is made per row, the two halves overlap (pyarrow
releases the GIL), and memory is bounded by the chunk and row-group sizes, not by the
table.

The window is counted and copied inside one REPEATABLE READ, READ ONLY transaction, so
the count and the file describe the same snapshot; a mismatch is a ReconciliationError.

CSV carries NULL as an unquoted empty field and ``''`` as ``""``, so the two stay
distinct. Types whose text form pyarrow cannot parse are reshaped in the SELECT:
intervals as three integer fields (months, days, microseconds), arrays as a cardinality
plus a CSV block of their elements (parsed with the element type's own rules). A value
with no faithful Arrow form (NaN in numeric(p, s), an infinite or BC date, time
24:00:00) raises UnsupportedColumnType naming the table and the column.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import queue
import re
import socket
import ssl
import struct
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import pg8000.native
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from totes_ingest import config
from totes_ingest.cursor import CursorRange
from totes_ingest.db_errors import source_errors
from totes_ingest.errors import (
    IngestError,
    ReconciliationError,
    SourceError,
    UnsupportedColumnType,
)
from totes_ingest.format_time import parse_time
from totes_ingest.generate_new_entry_query import validated_time
from totes_ingest.identifiers import quote_ident
from totes_ingest.pg_types import INTERVAL, Column, schema_of, table_columns
from totes_ingest.reread import ctid_predicate, missing_ctids, pairs_query
from totes_ingest.source import CURSOR_COLUMN, SourceTable, resolve_table
from totes_ingest.window import Window

Compression = Literal["zstd", "snappy"]
COMPRESSION: Compression = "zstd"

# The session settings the CSV text depends on, fixed for the transaction (SET LOCAL).
SESSION_SETTINGS = (
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL DateStyle = 'ISO, YMD'",
    "SET LOCAL IntervalStyle = 'postgres'",
    "SET LOCAL extra_float_digits = 3",
    "SET LOCAL bytea_output = 'hex'",
)
# CSV bytes parsed at a time (whole rows: a larger row is a chunk of its own), and
# how many chunks may wait for the writer. Together with the row group they bound memory.
CHUNK_BYTES = 2 << 20
_QUEUED_CHUNKS = 4

_SRC = "_totes_src"
_IN_TRANSACTION = (b"T", b"E")  # pg8000's last ReadyForQuery status: in a (failed) block
_CONVERT = {
    "null_values": [""],
    "strings_can_be_null": True,
    "quoted_strings_can_be_null": False,
    "true_values": ["t", "true"],
    "false_values": ["f", "false"],
}


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
) -> ExtractResult:
    """Write the rows of ``public.table`` with ``last_updated`` in ``[start_time, end_time)``
    to ``path`` as Parquet, schema from the catalog; ``start_time=None`` is from the start.

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
    )


def extract_window(
    conn: pg8000.native.Connection,
    window: Window,
    source: SourceTable,
    path: pathlib.Path,
    *,
    row_group_rows: int | None = None,
    in_lake: pa.Table | None = None,
) -> ExtractResult:
    """Write the rows of ``window``'s cursor range to ``path`` as Parquet.

    Every row of the range ``[start, end)``; of its re-read range, the rows whose (key,
    cursor) pair ``in_lake`` (see ``reread.lake_versions``) does not hold. Both are read,
    and counted, in one snapshot. ``conn`` must not be inside a transaction: the extract
    runs its own read-only snapshot and leaves the session as it found it. On any error
    the file is removed.
    """
    table, label = window.table, window.label
    if window.cursor is None:
        raise ValueError(f"window {label} of {table} has no cursor range")
    group_rows = row_group_rows or config.row_group_rows()
    if group_rows < 1:
        raise ValueError(f"row_group_rows must be positive, not {group_rows}")
    if getattr(conn, "_transaction_status", None) in _IN_TRANSACTION:
        raise ValueError("extract_to_parquet needs a connection outside any transaction")
    cursor = f"{_SRC}.{quote_ident(CURSOR_COLUMN)}"
    db = _Db(conn, table, label)
    try:
        db.run(
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; "
            + "; ".join(SESSION_SETTINGS)
        )
        columns = table_columns(conn, table, window=label, relation=source.relation)
        schema = schema_of(columns)
        plans = [_plan(column, f"{_SRC}.{quote_ident(column.name)}") for column in columns]
        select = ", ".join(expr for plan in plans for expr in plan.exprs)
        rows_of = f"SELECT {select} FROM {source.relation} AS {_SRC} WHERE "  # nosec B608
        predicate = window.cursor.predicate(source, cursor)
        copies = [f"COPY ({rows_of}{predicate}) TO STDOUT (FORMAT csv)"]
        _widen_read_buffer(conn)
        extra = _reread(db, window.cursor, source, schema, in_lake)
        if extra:
            copies.append(f"COPY ({rows_of}{_SRC}.{ctid_predicate(extra)}) TO STDOUT (FORMAT csv)")
        sink = _ParquetSink(conn, path, schema, plans, group_rows, table, label)
        count = f"SELECT count(*) FROM {source.relation} AS {_SRC} WHERE {predicate}"  # nosec B608
        written, ((counted,),) = sink.run(
            lambda stream: [db.run(sql, stream=stream) for sql in copies],
            # the same snapshot, counted while the writer thread finishes the file
            then=lambda: db.run(count),
        )
        db.run("COMMIT")
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
    return ExtractResult(rows=written, bytes=path.stat().st_size, schema=schema, reread=len(extra))


def _reread(
    db: _Db, cursor: CursorRange, source: SourceTable, schema: pa.Schema, in_lake: pa.Table | None
) -> list[str]:
    """The ``ctid`` of the re-read range's rows the lake does not hold (in the snapshot)."""
    predicate = cursor.reread_predicate(source, quote_ident(CURSOR_COLUMN))
    if predicate is None or not source.key:
        return []
    if in_lake is None:
        raise ValueError("a window with a re-read range needs the lake's versions")
    chunks: list[bytes] = []
    stream = _CopyStream(db.conn, lambda chunk: chunks.append(chunk.data), CHUNK_BYTES)
    db.run(pairs_query(source, predicate), stream=stream)
    stream.flush()
    cursor_type = schema.field(CURSOR_COLUMN).type
    return missing_ctids(b"".join(chunks), source, in_lake, cursor_type)


class _Db:
    """Runs statements, translating driver errors into the project's errors."""

    def __init__(self, conn: pg8000.native.Connection, table: str, window: str) -> None:
        self.conn = conn
        self.table = table
        self.window = window

    def run(self, sql: str, **kwargs: Any) -> Any:
        with source_errors("extract", table=self.table, window=self.window):
            return self.conn.run(sql, **kwargs)

    def rollback_quietly(self) -> None:
        """End the transaction if the connection is still usable; a dead one is left be."""
        with contextlib.suppress(pg8000.exceptions.Error, OSError):
            self.conn.run("ROLLBACK")


# --- per-column plans: the SELECT expressions, their CSV types, the finishing step ---

Finish = Callable[[Sequence[pa.Array]], pa.Array]


@dataclass(frozen=True)
class _Plan:
    column: Column
    exprs: tuple[str, ...]
    csv_types: tuple[pa.DataType, ...]
    finish: Finish | None  # None: the CSV column is already the final array


def _plan(column: Column, ref: str) -> _Plan:
    """How ``column`` (an SQL expression ``ref``) is selected, parsed and finished."""
    kind = column.kind
    if kind == "plain" and pa.types.is_decimal256(column.arrow_type):
        # pyarrow's CSV reader stops at decimal128; its cast refuses any rounding.
        return _Plan(column, (ref,), (pa.string(),), partial(_finish_cast, column.arrow_type))
    if kind == "plain":
        return _Plan(column, (ref,), (column.arrow_type,), None)
    if kind == "json":
        return _Plan(column, (ref,), (pa.string(),), _finish_json)
    if kind == "uuid":
        return _Plan(column, (ref,), (pa.string(),), _finish_uuid)
    if kind == "bytea":
        return _Plan(column, (ref,), (pa.string(),), _finish_bytea)
    if kind == "interval":
        # Exact: extract() of an interval field is numeric (PostgreSQL 14+).
        exprs = (
            f"(extract(year FROM {ref}) * 12 + extract(month FROM {ref}))::int4",
            f"extract(day FROM {ref})::int4",
            f"(extract(hour FROM {ref}) * 3600000000 + extract(minute FROM {ref}) * 60000000"
            f" + extract(microseconds FROM {ref}))::int8",
        )
        return _Plan(column, exprs, (pa.int32(), pa.int32(), pa.int64()), _finish_interval)
    assert column.element is not None
    return _array_plan(column, column.element, ref)


def _array_plan(column: Column, element: Column, ref: str) -> _Plan:
    """An array as (cardinality, CSV block of its elements, one line each, in order).

    The elements are parsed by their own plan, so a list<T> is typed exactly as a T
    column would be. A multi-dimensional value gets cardinality -1 and is refused.
    """
    inner = _plan(element, "_totes_u._totes_e")
    fields = " || ',' || ".join(
        f"CASE WHEN ({e}) IS NULL THEN '' ELSE '\"' || replace(({e})::text, '\"', '\"\"')"
        " || '\"' END"
        for e in inner.exprs
    )
    cardinality = f"CASE WHEN array_ndims({ref}) > 1 THEN -1 ELSE cardinality({ref}) END"
    block = (
        f"(SELECT string_agg({fields}, E'\\n' ORDER BY _totes_u._totes_n) || E'\\n'"  # nosec B608
        f" FROM unnest({ref}) WITH ORDINALITY AS _totes_u(_totes_e, _totes_n))"
    )

    def finish(arrays: Sequence[pa.Array]) -> pa.Array:
        counts, blocks = arrays
        if pc.any(pc.equal(counts, -1)).as_py():
            raise UnsupportedColumnType(
                f"column {column.name!r} holds a multi-dimensional array; only one-"
                "dimensional arrays map to a list"
            )
        lengths = pc.fill_null(counts, 0)
        offsets = pa.concat_arrays(
            [pa.array([0], pa.int32()), pc.cumulative_sum(lengths).cast(pa.int32())]
        )
        _, payload = _string_payload(pc.fill_null(blocks, ""))
        values = _parse_elements(inner, payload, offsets[-1].as_py())
        return pa.ListArray.from_arrays(
            offsets, values, type=column.arrow_type, mask=pc.is_null(counts)
        )

    return _Plan(column, (cardinality, block), (pa.int32(), pa.string()), finish)


def _parse_elements(inner: _Plan, payload: bytes, expected: int) -> pa.Array:
    if expected == 0:
        return pa.array([], type=inner.column.arrow_type)
    names = [f"c{i}" for i in range(len(inner.exprs))]
    table = pacsv.read_csv(
        io.BytesIO(payload),
        read_options=pacsv.ReadOptions(column_names=names, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(
            column_types=dict(zip(names, inner.csv_types, strict=True)), **_CONVERT
        ),
    )
    if table.num_rows != expected:
        raise ValueError(f"array elements: parsed {table.num_rows}, expected {expected}")
    arrays = [table.column(i).combine_chunks() for i in range(table.num_columns)]
    return arrays[0] if inner.finish is None else inner.finish(arrays)


def _finish_cast(arrow_type: pa.DataType, arrays: Sequence[pa.Array]) -> pa.Array:
    return pc.cast(arrays[0], arrow_type)


def _finish_json(arrays: Sequence[pa.Array]) -> pa.Array:
    return pa.ExtensionArray.from_storage(pa.json_(), arrays[0])


def _finish_uuid(arrays: Sequence[pa.Array]) -> pa.Array:
    text = arrays[0]
    hex_digits = pc.replace_substring(pc.fill_null(text, "0" * 32), "-", "")
    _, payload = _string_payload(hex_digits)
    raw = bytes.fromhex(payload.decode("ascii"))
    storage = pa.Array.from_buffers(pa.binary(16), len(text), [None, pa.py_buffer(raw)])
    return pa.ExtensionArray.from_storage(pa.uuid(), _with_nulls_of(text, storage))


def _finish_bytea(arrays: Sequence[pa.Array]) -> pa.Array:
    """``\\x0a0b`` (bytea_output = hex) to binary, decoding the whole batch at once."""
    text = arrays[0]
    digits = pc.utf8_slice_codeunits(pc.fill_null(text, "\\x"), 2)
    offsets, payload = _string_payload(digits)
    raw = bytes.fromhex(payload.decode("ascii"))
    half = pc.divide(offsets, pa.scalar(2, pa.int32()))  # two hex digits a byte
    built = pa.Array.from_buffers(
        pa.binary(), len(text), [None, half.buffers()[1], pa.py_buffer(raw)]
    )
    return _with_nulls_of(text, built)


def _finish_interval(arrays: Sequence[pa.Array]) -> pa.Array:
    return pa.StructArray.from_arrays(
        list(arrays), fields=list(INTERVAL), mask=pc.is_null(arrays[0])
    )


def _string_payload(text: pa.Array) -> tuple[pa.Array, bytes]:
    """A string array's offsets (int32, from 0) and its values' bytes, concatenated."""
    if len(text) == 0:
        return pa.array([0], pa.int32()), b""
    _, offsets_buffer, data = text.buffers()
    offsets = pa.Array.from_buffers(
        pa.int32(), len(text) + 1, [None, offsets_buffer], offset=text.offset
    )
    start, end = offsets[0].as_py(), offsets[-1].as_py()
    payload = data[start:end].to_pybytes() if data is not None else b""
    return pc.subtract(offsets, pa.scalar(start, pa.int32())), payload


def _with_nulls_of(source: pa.Array, built: pa.Array) -> pa.Array:
    if source.null_count == 0:
        return built
    return pc.if_else(pc.is_valid(source), built, pa.nulls(len(built), built.type))


# --- the COPY loop: whole rows in chunks, one Python call per buffered run of rows ---

_COPY_DATA = ord("d")
_LENGTH = struct.Struct("!i")
_VECTOR_MIN_BYTES = 16 << 10  # below this, numpy's per-call cost outweighs the loop's
_READ_BUFFER_BYTES = 1 << 20
_widened: weakref.WeakSet[Any] = weakref.WeakSet()


def _widen_read_buffer(conn: pg8000.native.Connection) -> None:
    """Give pg8000's plain (TCP or unix) socket a 1 MB read buffer instead of 8 KB.

    Larger peeks let the COPY stream below frame a few large buffers instead of many
    small ones. The swap happens only if nothing is waiting in the old buffer (checked
    without blocking), so no byte of the protocol is lost; a TLS socket is left alone,
    as it yields one record (16 KB at most) a read whatever the buffer.
    """
    sock, usock = getattr(conn, "_sock", None), getattr(conn, "_usock", None)
    if not isinstance(sock, io.BufferedRWPair) or sock in _widened:
        return
    if not isinstance(usock, socket.socket) or isinstance(usock, ssl.SSLSocket):
        return
    timeout = usock.gettimeout()
    try:
        usock.settimeout(0.0)
        waiting = sock.peek(1)  # b"" when nothing is buffered nor arriving
    except OSError:
        return
    finally:
        usock.settimeout(timeout)
    if waiting:
        return
    wide = usock.makefile(mode="rwb", buffering=_READ_BUFFER_BYTES)
    _widened.add(wide)
    conn._sock = wide


class _CopyStream:
    """The stream pg8000's COPY OUT writes to: rows, gathered into chunks of whole rows.

    pg8000 dispatches every protocol message through several Python calls, and COPY
    sends one CopyData message per row, so that dispatch would be the extract's cost.
    When pg8000 hands over a row, this stream also takes every CopyData message already
    buffered on the connection (peeking, then consuming exactly the whole messages it
    parsed) and returns at the first other message (CopyDone, an error, a notice),
    which pg8000 reads as usual: the protocol state stays pg8000's. If the socket file
    is not the buffered reader this relies on, rows simply arrive one by one.

    Every CopyData message is one row, so each chunk handed to ``emit`` ends at a row
    boundary and is parsed on its own: no row can straddle two blocks, whatever its size.
    """

    def __init__(
        self, conn: pg8000.native.Connection, emit: Callable[[_Chunk], None], chunk_bytes: int
    ) -> None:
        self._emit = emit
        self._chunk_bytes = chunk_bytes
        self._parts: list[bytes | memoryview] = []
        self._size = 0
        self._rows = 0
        sock = getattr(conn, "_sock", None)
        usable = callable(getattr(sock, "peek", None)) and callable(getattr(sock, "read", None))
        self._sock: Any = sock if usable else None

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        self._rows += 1
        if self._sock is not None:
            self._drain(self._sock)
        if self._size >= self._chunk_bytes:
            self.flush()

    def flush(self) -> None:
        """Hand over the rows gathered so far (called at the end of the COPY, too)."""
        if self._parts:
            data = b"".join(self._parts)
            # One line break per row means no value holds one, and the CSV parser can
            # skip the slower quote-aware row splitting.
            plain = data.count(b"\n") == self._rows and b"\r" not in data
            self._parts.clear()  # in place: _drain holds the list
            self._size = self._rows = 0
            self._emit(_Chunk(data, line_breaks_in_values=not plain))

    def _drain(self, sock: Any) -> None:
        parts, unpack = self._parts, _LENGTH.unpack_from
        while True:
            buffered: bytes = sock.peek(1)  # what is buffered; reads only if nothing is
            if not buffered or buffered[0] != _COPY_DATA:
                return
            end, pos, rows = len(buffered), 0, 0
            if end >= _VECTOR_MIN_BYTES:
                pos, rows, payloads = _leading_copy_data(buffered)
                if rows:
                    parts.append(payloads)
            view = memoryview(buffered)
            while pos + 5 <= end and buffered[pos] == _COPY_DATA:  # the rest, one by one
                stop = pos + 1 + unpack(buffered, pos + 1)[0]
                if stop > end:
                    break
                parts.append(view[pos + 5 : stop])
                pos = stop
                rows += 1
            if pos == 0:  # one CopyData message larger than the buffer: read it whole
                size = unpack(_read_exactly(sock, 5), 1)[0]
                parts.append(_read_exactly(sock, size - 4))
                self._size += size - 4
                self._rows += 1
            else:
                sock.read(pos)  # already buffered: consumes exactly the parsed messages
                self._size += pos
                self._rows += rows
            if self._size >= self._chunk_bytes:
                self.flush()


def _leading_copy_data(buffered: bytes) -> tuple[int, int, bytes]:
    """The CopyData messages at the start of ``buffered``, found without a Python loop.

    Returns (bytes they span, how many, their payloads concatenated). Every CSV row ends
    with a line break, so a message starts at 0 and after a line break, where a ``d``
    follows; a candidate counts only if the previous counted message ends exactly there,
    so a line break inside a value (or a length byte equal to 10) stops the run and the
    caller parses the rest one message at a time. The result is always exact.
    """
    data = np.frombuffer(buffered, dtype=np.uint8)
    size = len(data)
    after_break = np.flatnonzero((data[:-1] == 10) & (data[1:] == _COPY_DATA)) + 1
    starts = np.concatenate((np.zeros(1, dtype=np.int64), after_break))
    starts = starts[starts <= size - 5]
    header = data[starts[:, None] + np.arange(1, 5)].astype(np.int64)
    stops = starts + 1 + ((header[:, 0] << 24) | (header[:, 1] << 16) | (header[:, 2] << 8))
    stops += header[:, 3]
    chained = np.flatnonzero(stops[:-1] != starts[1:])
    count = int(chained[0]) + 1 if len(chained) else len(starts)
    while count and stops[count - 1] > size:  # the last message may be cut off
        count -= 1
    if count == 0:
        return 0, 0, b""
    end = int(stops[count - 1])
    keep = np.ones(end, dtype=bool)
    keep[(starts[:count, None] + np.arange(5)).ravel()] = False
    return end, count, data[:end][keep].tobytes()


@dataclass(frozen=True)
class _Chunk:
    """Whole CSV rows, and whether any value in them holds a line break."""

    data: bytes
    line_breaks_in_values: bool


def _read_exactly(sock: Any, size: int) -> bytes:
    data: bytes = sock.read(size)
    if len(data) != size:
        raise pg8000.exceptions.InterfaceError("network error: connection closed mid-COPY")
    return data


# --- the writer thread: parses chunks of CSV into batches, writes Parquet row groups ---


class _ParquetSink:
    """Receives CSV chunks from the COPY and writes them, in a thread, as Parquet."""

    def __init__(
        self,
        conn: pg8000.native.Connection,
        path: pathlib.Path,
        schema: pa.Schema,
        plans: list[_Plan],
        row_group_rows: int,
        table: str,
        window: str,
    ) -> None:
        self.conn = conn
        self.path = path
        self.schema = schema
        self.plans = plans
        self.row_group_rows = row_group_rows
        self.table = table
        self.window = window
        types = [t for plan in plans for t in plan.csv_types]
        self.names = [f"c{i}" for i in range(len(types))]
        self.convert = pacsv.ConvertOptions(
            column_types=dict(zip(self.names, types, strict=True)), **_CONVERT
        )
        self.rows = 0
        self.error: BaseException | None = None
        # A bounded queue: the COPY waits for the writer rather than filling memory.
        self.chunks: queue.Queue[_Chunk | None] = queue.Queue(maxsize=_QUEUED_CHUNKS)

    def run(
        self, copy: Callable[[_CopyStream], object], then: Callable[[], Any]
    ) -> tuple[int, Any]:
        """Call ``copy`` with the stream to COPY into, then ``then`` while the last rows
        are still being written; return the rows written to the file and ``then()``."""
        thread = threading.Thread(target=self._consume, name="parquet-writer", daemon=True)
        thread.start()
        try:
            stream = _CopyStream(self.conn, self.chunks.put, CHUNK_BYTES)
            try:
                copy(stream)
                stream.flush()
            finally:
                self.chunks.put(None)
            then_result = then()
        finally:
            thread.join()
        if self.error is not None:
            raise self._translated(self.error) from self.error
        return self.rows, then_result

    def _consume(self) -> None:
        try:
            self._write_parquet()
        except BaseException as e:  # handed to the main thread by run()
            self.error = e
            while self.chunks.get() is not None:  # drain, so the COPY ends cleanly
                pass

    def _write_parquet(self) -> None:
        # Dictionaries pay off for strings (dates as varchar, names, codes); for ids,
        # amounts and timestamps they cost CPU and, with zstd, make the file larger.
        strings = [f.name for f in self.schema if pa.types.is_string(f.type)]
        with pq.ParquetWriter(
            self.path, self.schema, compression=COMPRESSION, use_dictionary=strings or False
        ) as writer:
            pending: list[pa.RecordBatch] = []
            pending_rows = 0
            while (chunk := self.chunks.get()) is not None:
                for batch in self._parsed(chunk):
                    pending.append(batch)
                    pending_rows += batch.num_rows
                if pending_rows >= self.row_group_rows:
                    pending, pending_rows = self._flush(writer, pending, full_only=True)
            self._flush(writer, pending, full_only=False)

    def _flush(
        self, writer: pq.ParquetWriter, pending: list[pa.RecordBatch], *, full_only: bool
    ) -> tuple[list[pa.RecordBatch], int]:
        """Write whole row groups from ``pending``; keep back a partial one if ``full_only``."""
        table = pa.Table.from_batches(pending, schema=self.schema)
        size = self.row_group_rows
        whole = (table.num_rows // size) * size if full_only else table.num_rows
        if whole:
            writer.write_table(table.slice(0, whole), row_group_size=size)
            self.rows += whole
        rest = table.slice(whole)
        return rest.to_batches(), rest.num_rows

    def _parsed(self, chunk: _Chunk) -> Iterator[pa.RecordBatch]:
        table = pacsv.read_csv(
            pa.py_buffer(chunk.data),
            read_options=pacsv.ReadOptions(
                column_names=self.names, block_size=len(chunk.data) + 1, use_threads=False
            ),
            parse_options=pacsv.ParseOptions(newlines_in_values=chunk.line_breaks_in_values),
            convert_options=self.convert,
        )
        for batch in table.to_batches():
            yield self._finished(batch)

    def _finished(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        arrays: list[pa.Array] = []
        i = 0
        for plan in self.plans:
            n = len(plan.exprs)
            parts = batch.columns[i : i + n]
            i += n
            try:
                arrays.append(parts[0] if plan.finish is None else plan.finish(parts))
            except UnsupportedColumnType as e:
                raise UnsupportedColumnType(str(e), table=self.table, window=self.window) from e
            except (pa.ArrowInvalid, ValueError) as e:
                raise self._value_error(plan.column.name, e) from e
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _translated(self, error: BaseException) -> BaseException:
        if isinstance(error, IngestError):
            return error
        if isinstance(error, pa.ArrowInvalid):
            match = re.search(r"CSV column #(\d+)", str(error))
            if match is not None:
                return self._value_error(self._column_of(int(match.group(1))), error)
            return SourceError(
                f"cannot parse the COPY output: {error}", table=self.table, window=self.window
            )
        return IngestError(
            f"cannot write the Parquet file: {type(error).__name__}: {error}",
            table=self.table,
            window=self.window,
        )

    def _column_of(self, csv_index: int) -> str:
        i = 0
        for plan in self.plans:
            i += len(plan.exprs)
            if csv_index < i:
                return plan.column.name
        return f"#{csv_index}"

    def _value_error(self, column: str, error: BaseException) -> UnsupportedColumnType:
        return UnsupportedColumnType(
            f"column {column!r} holds a value with no faithful Arrow form: {error}",
            table=self.table,
            window=self.window,
        )
