"""pg8000's internals that the COPY fast path relies on, checked on a real connection.

``copy_stream`` is the one module reaching into pg8000's private state. If a driver
upgrade renames or reshapes any of it, these tests fail, before the extract silently
falls back to its slow row-by-row path (or worse).
"""

from __future__ import annotations

import io
import socket

import pg8000.native
import pytest

from totes_ingest.copy_stream import Chunk, CopyStream, in_transaction, widen_read_buffer

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


def test_rows_are_drained_from_the_buffer_in_bulk(conn: pg8000.native.Connection) -> None:
    # GIVEN a widened connection and a COPY of many short rows
    widen_read_buffer(conn)
    chunks: list[Chunk] = []
    stream = CopyStream(conn, chunks.append, 64 << 10)
    # WHEN pg8000 runs the COPY into the stream
    conn.run(
        "COPY (SELECT g, 'row ' || g FROM generate_series(1, 50000) g) TO STDOUT", stream=stream
    )
    stream.flush()
    # THEN every row arrives, in order, and most of them came through the fast path
    lines = b"".join(chunk.data for chunk in chunks).splitlines()
    assert lines == [f"{g}\trow {g}".encode() for g in range(1, 50001)]
    assert stream.drained_rows > 40000
    assert all(not chunk.line_breaks_in_values for chunk in chunks)
