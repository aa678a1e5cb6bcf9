"""pg8000's internals that the COPY fast path relies on, checked on a real connection.

``copy_stream`` is the one module reaching into pg8000's private state. If a driver
upgrade renames or reshapes any of it, these tests fail, before the extract silently
falls back to its slow row-by-row path (or worse).
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pg8000.native
import pyarrow as pa
import pytest

from totes_ingest import copy_stream
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


class _Sleeps:
    """Counts the stream's sleeps, sending ``arriving`` bytes into the socket at each."""

    def __init__(self, sender: socket.socket, arriving: int = 0) -> None:
        self.sender, self.arriving, self.count = sender, arriving, 0

    def __call__(self, seconds: float) -> None:
        self.count += 1
        if self.arriving:
            self.sender.sendall(bytes(self.arriving))


@pytest.fixture
def stream_over_socket() -> Iterator[tuple[CopyStream, socket.socket]]:
    """A stream reading a real socket as pg8000 would (a buffered file over it), and the
    socket's other end."""
    ours, theirs = socket.socketpair()
    connection = SimpleNamespace(_sock=ours.makefile("rwb"), _usock=ours)
    yield CopyStream(connection, lambda chunk: None, 1), theirs  # type: ignore[arg-type]
    ours.close()
    theirs.close()


def test_the_stream_waits_only_while_data_keeps_arriving(
    stream_over_socket: tuple[CopyStream, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    stream, theirs = stream_over_socket
    assert stream._fd is not None  # a plain socket: the stream may wait on it
    # GIVEN nothing arrives (the COPY has ended, or the server waits on us): one look more
    sleeps = _Sleeps(theirs)
    monkeypatch.setattr(copy_stream.time, "sleep", sleeps)
    stream._await_data(stream._fd)
    assert sleeps.count == 1
    # GIVEN data keeps trickling in: the stream waits, but never past its limit
    sleeps = _Sleeps(theirs, arriving=1000)
    monkeypatch.setattr(copy_stream.time, "sleep", sleeps)
    stream._await_data(stream._fd)
    assert sleeps.count == copy_stream._WAITS
    # GIVEN the socket already holds a full batch: no wait at all
    monkeypatch.setattr(copy_stream, "_FILL_BYTES", 4096)  # what a socketpair can hold
    theirs.sendall(bytes(4096))
    sleeps = _Sleeps(theirs)
    monkeypatch.setattr(copy_stream.time, "sleep", sleeps)
    stream._await_data(stream._fd)
    assert sleeps.count == 0


def test_a_large_copy_is_framed_in_batches_larger_than_the_servers_flushes(
    conn: pg8000.native.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a widened connection, and time for the socket to fill however slow the server
    widen_read_buffer(conn)
    monkeypatch.setattr(copy_stream, "_WAITS", 200)
    batches: list[int] = []
    framed = copy_stream._leading_copy_data
    monkeypatch.setattr(
        copy_stream,
        "_leading_copy_data",
        lambda buffered, count: (batches.append(len(buffered)), framed(buffered, count))[1],
    )
    # WHEN a COPY of about 9 MB runs into the stream
    rows, _ = _copied(conn, "SELECT g, repeat('x', 80) FROM generate_series(1, 100000) g")
    # THEN the rows are exact, and were framed in batches of 128 KB and more on average
    # (without the wait: about 30 KB, the server's 8 KB flushes a few at a time)
    assert rows == [(g, "x" * 80) for g in range(1, 100001)]
    assert len(batches) < sum(batches) / (128 << 10)
