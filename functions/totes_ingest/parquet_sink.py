"""The threaded Parquet sink: chunks of COPY rows in, one Parquet file out.

A writer thread parses each chunk of whole CSV rows with pyarrow (typed by the columns'
plans, never inferred), finishes the columns that need it, and writes zstd row groups of
at most ``row_group_rows`` rows. The COPY thread and the writer overlap (pyarrow releases
the GIL), and a bounded queue makes the COPY wait for the writer rather than fill memory.
"""

from __future__ import annotations

import pathlib
import queue
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal

import pg8000.native
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from totes_ingest import copy_stream
from totes_ingest.copy_stream import Chunk, CopyStream
from totes_ingest.errors import IngestError, SourceError, UnsupportedColumnType
from totes_ingest.pg_types import CSV_CONVERT, Plan

Compression = Literal["zstd", "snappy"]
COMPRESSION: Compression = "zstd"
_QUEUED_CHUNKS = 4  # chunks that may wait for the writer: with the row group, bounds memory


class ParquetSink:
    """Receives CSV chunks from the COPY and writes them, in a thread, as Parquet."""

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
        self.table = table
        self.window = window
        types = [t for plan in plans for t in plan.csv_types]
        self.names = [f"c{i}" for i in range(len(types))]
        self.convert = pacsv.ConvertOptions(
            column_types=dict(zip(self.names, types, strict=True)), **CSV_CONVERT
        )
        self.rows = 0
        self.error: BaseException | None = None
        # A bounded queue: the COPY waits for the writer rather than filling memory.
        self.chunks: queue.Queue[Chunk | None] = queue.Queue(maxsize=_QUEUED_CHUNKS)

    def run(self, copy: Callable[[CopyStream], object], then: Callable[[], Any]) -> tuple[int, Any]:
        """Call ``copy`` with the stream to COPY into, then ``then`` while the last rows
        are still being written; return the rows written to the file and ``then()``.

        ``copy`` may run several COPY statements into the stream, one after another on
        the same connection and transaction (all with the same columns): their rows land
        in the one file. Callers rely on this (a window's rows plus rows re-read by ctid
        into the same snapshot's file), so keep it when changing the sink.
        """
        thread = threading.Thread(target=self._consume, name="parquet-writer", daemon=True)
        thread.start()
        try:
            stream = CopyStream(self.conn, self.chunks.put, copy_stream.CHUNK_BYTES)
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

    def _parsed(self, chunk: Chunk) -> Iterator[pa.RecordBatch]:
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
