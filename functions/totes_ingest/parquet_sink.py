"""The threaded Parquet sink: chunks of binary COPY tuples in, one Parquet file out.

A decoder thread decodes each chunk of whole tuples with numpy (each column by its plan
from ``pg_types``, typed by the catalog, never inferred) and a writer thread writes zstd
row groups of at most ``row_group_rows`` rows and about ``ROW_GROUP_BYTES`` of Arrow
data, whichever comes first: memory is bounded by both, whatever the width of a row. The
COPY thread, the decoder and the writer overlap (numpy and pyarrow release the GIL), and
bounded queues make each wait for the next rather than fill memory.
"""

from __future__ import annotations

import os
import pathlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import pg8000.native
import pyarrow as pa
import pyarrow.parquet as pq

from totes_ingest import config, copy_stream
from totes_ingest.copy_stream import Chunk, CopyStream
from totes_ingest.errors import IngestError, SourceError, UnsupportedColumnType
from totes_ingest.pg_binary import fields
from totes_ingest.pg_types import Plan

Compression = Literal["zstd", "snappy"]
COMPRESSION: Compression = "zstd"
_QUEUED_CHUNKS = 4  # chunks that may wait for a decoder: with the row group, bounds memory
_QUEUED_BATCHES = 2  # decoded chunks that may wait for the writer


class _Stopped(Exception):
    """Raised into an extra connection's COPY when another COPY has failed."""


class ParquetSink:
    """Receives binary COPY chunks and writes them, in a thread, as one Parquet file."""

    def __init__(
        self,
        conn: pg8000.native.Connection,
        path: pathlib.Path,
        schema: pa.Schema,
        plans: list[Plan],
        row_group_rows: int,
        table: str,
        window: str,
    ) -> None:
        self.conn = conn
        self.path = path
        self.schema = schema
        self.plans = plans
        self.row_group_rows = row_group_rows
        self.row_group_bytes = config.DEFAULT_ROW_GROUP_BYTES
        self.table = table
        self.window = window
        self.rows = 0
        self.error: BaseException | None = None  # the first decoder's or the writer's
        self.copy_error: BaseException | None = None  # the first COPY's to fail
        self.stopped = threading.Event()  # something failed: the others stop
        self._lock = threading.Lock()
        # Bounded queues: the COPY waits for the decoders, the decoders for the writer,
        # rather than filling memory.
        self.chunks: queue.Queue[Chunk | None] = queue.Queue(maxsize=_QUEUED_CHUNKS)
        self.batches: queue.Queue[pa.RecordBatch | None] = queue.Queue(maxsize=_QUEUED_BATCHES)
        self._decoding = 0  # decoders the writer has not yet seen finish

    def run(self, copy: Callable[[CopyStream], object], then: Callable[[], Any]) -> tuple[int, Any]:
        """Call ``copy`` with the stream to COPY into, then ``then`` while the last rows
        are still being written; return the rows written to the file and ``then()``.

        ``copy`` may run several COPY statements into the stream, one after another on
        the same connection and transaction (all selecting the plans' expressions):
        their rows land in the one file. Callers rely on this (a window's rows plus rows
        re-read by ctid into the same snapshot's file), so keep it when changing the sink.
        """
        return self.run_parallel([(self.conn, copy)], then)

    def run_parallel(
        self,
        copies: Sequence[tuple[pg8000.native.Connection, Callable[[CopyStream], object]]],
        then: Callable[[], Any],
    ) -> tuple[int, Any]:
        """:meth:`run` with one ``copy`` a connection, all at once: the first on this
        thread, each other on a thread of its own, every stream feeding the one bounded
        queue (so the one writer, and the memory bound, are the same as for one COPY).

        Chunks are decoded on one thread a connection, up to one a CPU (numpy and pyarrow
        release the GIL for the bulk of it), and written by one more, so decoding overlaps
        the Parquet encoding; with one connection the rows keep the COPY's order. Rows of different
        connections interleave chunk by chunk. If anything fails, the other connections'
        streams stop at their next chunk (raising inside their COPY: the caller closes
        those connections) and the first one's chunks are dropped unwritten; the first
        error is raised.
        """
        # One decoder a connection, up to one a CPU: more only add memory.
        self._decoding = max(1, min(len(copies), os.cpu_count() or 1))
        decoders = [
            threading.Thread(target=self._decode, name="parquet-decoder", daemon=True)
            for _ in range(self._decoding)
        ]
        thread = threading.Thread(target=self._consume, name="parquet-writer", daemon=True)
        for started in (*decoders, thread):
            started.start()
        readers: list[threading.Thread] = []
        try:
            try:
                for conn, copy in copies[1:]:
                    reader = threading.Thread(
                        target=self._read, args=(conn, copy), name="copy-reader", daemon=True
                    )
                    reader.start()
                    readers.append(reader)
                self._copy(*copies[0])
            finally:
                for reader in readers:
                    reader.join()
                for _ in decoders:
                    self.chunks.put(None)
            if self.copy_error is not None:
                raise self.copy_error
            then_result = then()
        finally:
            for joined in (*decoders, thread):
                joined.join()
            # The row groups' buffers go back to the system, not to the pool: what runs
            # next (the upload, in a 256 MB function) has the memory the extract used.
            pa.default_memory_pool().release_unused()
        if self.error is not None:
            raise self._translated(self.error) from self.error
        return self.rows, then_result

    def _copy(self, conn: pg8000.native.Connection, copy: Callable[[CopyStream], object]) -> None:
        """One connection's COPY statements into a stream of their own (this thread)."""
        stream = CopyStream(conn, self._emit_first, len(self.plans), copy_stream.CHUNK_BYTES)
        try:
            copy(stream)
            stream.flush()
        except BaseException as e:
            self._failed(e)
            raise

    def _read(self, conn: pg8000.native.Connection, copy: Callable[[CopyStream], object]) -> None:
        """An extra connection's COPY, on its own thread; its error goes to run_parallel."""
        stream = CopyStream(conn, self._emit_other, len(self.plans), copy_stream.CHUNK_BYTES)
        try:
            copy(stream)
            stream.flush()
        except _Stopped:
            pass
        except BaseException as e:  # handed to the first thread by run_parallel()
            self._failed(e)

    def _failed(self, error: BaseException) -> None:
        with self._lock:
            if self.copy_error is None:
                self.copy_error = error
            self.stopped.set()

    def _emit_first(self, chunk: Chunk) -> None:
        if not self.stopped.is_set():  # else: dropped, the COPY runs to its end
            self.chunks.put(chunk)

    def _emit_other(self, chunk: Chunk) -> None:
        if self.stopped.is_set():
            raise _Stopped
        self.chunks.put(chunk)

    def _decode(self) -> None:
        """Decode chunks into record batches for the writer, until its end of input."""
        try:
            while (chunk := self.chunks.get()) is not None:
                if not self.stopped.is_set():
                    self.batches.put(self._decoded(chunk))
        except BaseException as e:  # handed to the main thread by run_parallel()
            self._failed_writing(e)
            while self.chunks.get() is not None:  # drain, so the COPY ends cleanly
                pass
        finally:
            self.batches.put(None)

    def _consume(self) -> None:
        try:
            self._write_parquet()
        except BaseException as e:  # handed to the main thread by run_parallel()
            self._failed_writing(e)
            for _ in self._decoded_batches():  # drain, so the decoders end cleanly
                pass

    def _failed_writing(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
            self.stopped.set()  # extra connections stop; the first one's chunks are dropped

    def _decoded_batches(self) -> Iterator[pa.RecordBatch]:
        """The decoders' batches, until every decoder has finished."""
        while self._decoding:
            batch = self.batches.get()
            if batch is None:
                self._decoding -= 1
            else:
                yield batch

    def _write_parquet(self) -> None:
        with pq.ParquetWriter(self.path, self.schema, **writer_options(self.schema)) as writer:
            pending: list[pa.RecordBatch] = []
            for batch in self._decoded_batches():
                pending.append(batch)
                if sum(b.nbytes for b in pending) >= self.row_group_bytes:
                    pending = self._flush(writer, pending, keep_partial=False)
                elif sum(b.num_rows for b in pending) >= self.row_group_rows:
                    pending = self._flush(writer, pending, keep_partial=True)
            self._flush(writer, pending, keep_partial=False)

    def _flush(
        self, writer: pq.ParquetWriter, pending: list[pa.RecordBatch], *, keep_partial: bool
    ) -> list[pa.RecordBatch]:
        """Write ``pending`` as row groups of ``row_group_rows``; return what is kept
        back (a partial row group if ``keep_partial``)."""
        table = pa.Table.from_batches(pending, schema=self.schema)
        size = self.row_group_rows
        whole = (table.num_rows // size) * size if keep_partial else table.num_rows
        if whole:
            writer.write_table(table.slice(0, whole), row_group_size=size)
            self.rows += whole
        rest: list[pa.RecordBatch] = table.slice(whole).to_batches()
        return rest

    def _decoded(self, chunk: Chunk) -> pa.RecordBatch:
        values = fields(chunk.data, chunk.starts, len(self.plans), [p.width for p in self.plans])
        arrays: list[pa.Array] = []
        for plan, column_values in zip(self.plans, values, strict=True):
            try:
                arrays.append(plan.decode(column_values))
            except UnsupportedColumnType as e:
                raise UnsupportedColumnType(str(e), table=self.table, window=self.window) from e
            except (pa.ArrowInvalid, ValueError) as e:
                raise self._value_error(plan.column.name, e) from e
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _translated(self, error: BaseException) -> BaseException:
        if isinstance(error, IngestError):
            return error
        if isinstance(error, (pa.ArrowInvalid, ValueError)):
            return SourceError(
                f"cannot decode the COPY output: {error}", table=self.table, window=self.window
            )
        return IngestError(
            f"cannot write the Parquet file: {type(error).__name__}: {error}",
            table=self.table,
            window=self.window,
        )

    def _value_error(self, column: str, error: BaseException) -> UnsupportedColumnType:
        return UnsupportedColumnType(
            f"column {column!r} holds a value with no faithful Arrow form: {error}",
            table=self.table,
            window=self.window,
        )


def writer_options(schema: pa.Schema) -> dict[str, Any]:
    """The ParquetWriter's compression and encodings for ``schema``, chosen by type.

    Measured on ToteSys rows (benchmarks/RESULTS.md): dictionaries for strings (dates as
    varchar, names, codes) and decimals (prices: few distinct values); delta encoding
    (DELTA_BINARY_PACKED) for integers, dates, times and timestamps (ids and timestamps
    rise, so their deltas are small); decimals of up to 18 digits stored as INT32/INT64,
    as Spark writes them. Floats, booleans and binary stay PLAIN. Every reader the lake
    serves reads these: Spark 3.3+ (vectorized), Athena/Trino, DuckDB, Polars, pyarrow.
    BYTE_STREAM_SPLIT is not used: not every Athena/Trino release reads it.
    """
    dictionary = [f.name for f in schema if pa.types.is_string(f.type) or _is_decimal(f.type)]
    delta = {f.name: "DELTA_BINARY_PACKED" for f in schema if _is_delta(f.type)}
    return {
        "compression": COMPRESSION,
        "use_dictionary": dictionary or False,
        "column_encoding": delta or None,
        "store_decimal_as_integer": True,
    }


def _is_decimal(arrow_type: pa.DataType) -> bool:
    return bool(pa.types.is_decimal(arrow_type))


def _is_delta(arrow_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(arrow_type)
        or pa.types.is_date32(arrow_type)
        or pa.types.is_time64(arrow_type)
        or pa.types.is_timestamp(arrow_type)
    )
