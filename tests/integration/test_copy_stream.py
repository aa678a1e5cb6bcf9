"""pg8000's internals that the COPY fast path relies on, checked on a real connection.

``copy_stream`` is the one module reaching into pg8000's private state. If a driver
upgrade renames or reshapes any of it, these tests fail, before the extract silently
falls back to its slow row-by-row path (or worse).
"""

from __future__ import annotations

import io
import socket

import pg8000.native
import pyarrow as pa
import pytest

from totes_ingest.copy_stream import Chunk, CopyStream, in_transaction, widen_read_buffer
from totes_ingest.pg_binary import fields, fixed, variable

pytestmark = pytest.mark.integration


def test_the_connection_reads_messages_through_a_buffered_socket_file(
    conn: pg8000.native.Connection,
) -> None:
    assert isinstance(conn._sock, io.BufferedRWPair)
    assert callable(conn._sock.peek)
    assert callable(conn._sock.read)
    assert isinstance(conn._usock, socket.socket)


def test_the_last_ready_for_query_status_tells_a_transaction_block(
    conn: pg8000.native.Connection,
) -> None:
    conn.run("SELECT 1")
    assert conn._transaction_status == b"I"
    assert not in_transaction(conn)
    conn.run("BEGIN")
    assert conn._transaction_status == b"T"
    assert in_transaction(conn)
    with pytest.raises(pg8000.exceptions.DatabaseError):
        conn.run("SELECT 1 / 0")
    assert conn._transaction_status == b"E"
    assert in_transaction(conn)
    conn.run("ROLLBACK")
    assert not in_transaction(conn)


def test_the_read_buffer_is_widened_and_the_session_still_works(
    conn: pg8000.native.Connection,
) -> None:
    before = conn._sock
    widen_read_buffer(conn)
    assert conn._sock is not before
    assert isinstance(conn._sock, io.BufferedRWPair)
    assert conn.run("SELECT 41 + 1") == [[42]]


def _copied(conn: pg8000.native.Connection, *queries: str) -> tuple[list[tuple[int, str]], int]:
    """(id, text) tuples of each query's binary COPY, through one stream; rows drained."""
    chunks: list[Chunk] = []
    stream = CopyStream(conn, chunks.append, 2, 64 << 10)
    for query in queries:
        conn.run(f"COPY ({query}) TO STDOUT (FORMAT binary)", stream=stream)
    stream.flush()
    rows: list[tuple[int, str]] = []
    for chunk in chunks:
        ids, texts = fields(chunk.data, chunk.starts, 2)
        rows += zip(
            fixed(ids, pa.int32(), ">i4").to_pylist(),
            variable(texts, pa.string()).to_pylist(),
            strict=True,
        )
    return rows, stream.drained_rows


def test_tuples_are_drained_from_the_buffer_in_bulk(conn: pg8000.native.Connection) -> None:
    # GIVEN a widened connection WHEN pg8000 runs a COPY of many short rows into the stream
    widen_read_buffer(conn)
    rows, drained = _copied(conn, "SELECT g, 'row ' || g FROM generate_series(1, 50000) g")
    # THEN every row arrives, in order, and most of them came through the fast path
    assert rows == [(g, f"row {g}") for g in range(1, 50001)]
    assert drained > 40000


def test_several_copies_follow_on_in_one_stream(conn: pg8000.native.Connection) -> None:
    widen_read_buffer(conn)
    rows, _ = _copied(
        conn,
        "SELECT g, 'a' FROM generate_series(1, 20000) g",
        "SELECT 0, 'none' WHERE false",
        "SELECT g, 'b' FROM generate_series(1, 3) g",
    )
    assert rows == [(g, "a") for g in range(1, 20001)] + [(g, "b") for g in range(1, 4)]
