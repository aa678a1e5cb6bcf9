"""pg8000's internals that the COPY fast path relies on, checked on a real connection.

``copy_stream`` is the one module reaching into pg8000's private state. If a driver
upgrade renames or reshapes any of it, these tests fail, before the extract silently
falls back to its slow row-by-row path (or worse).
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
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


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        theirs = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
    return ours, theirs


def _stream_on(
    sock: socket.socket, emit: Callable[[Chunk], None] = lambda chunk: None
) -> CopyStream:
    """A stream reading ``sock`` as pg8000 would, through a buffered file over it (as wide
    as ``widen_read_buffer`` makes it)."""
    connection = SimpleNamespace(_sock=sock.makefile("rwb", buffering=1 << 20), _usock=sock)
    return CopyStream(connection, emit, 1)  # type: ignore[arg-type]


@pytest.fixture
def stream_over_socket() -> Iterator[tuple[CopyStream, socket.socket]]:
    """A stream reading a real TCP socket, and the socket's other end."""
    ours, theirs = _tcp_pair()
    yield _stream_on(ours), theirs
    ours.close()
    theirs.close()


def test_the_stream_never_waits_on_a_unix_socket() -> None:
    # a unix socket holds less than a batch (about 192 KiB here): waiting for one would
    # only stall the server on a full socket, batch after batch
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert _stream_on(ours)._fd is None


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
    monkeypatch.setattr(copy_stream, "_FILL_BYTES", 4096)
    theirs.sendall(bytes(4096))
    sleeps = _Sleeps(theirs)
    monkeypatch.setattr(copy_stream.time, "sleep", sleeps)
    stream._await_data(stream._fd)
    assert sleeps.count == 0


def _serve_copy(sock: socket.socket, messages: bytes) -> None:
    """Send ``messages`` as PostgreSQL sends a COPY: 8 KB flushes, paced (80 MB/s)."""
    for at in range(0, len(messages), 8192):
        sock.sendall(messages[at : at + 8192])
        time.sleep(0.0001)


def test_a_large_copy_over_tcp_is_framed_in_batches_larger_than_the_servers_flushes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a server sending a COPY of 100,000 one-field tuples (9 MB) then CopyDone, in
    # 8 KB flushes over TCP, and time for the socket to fill however slow the sender
    monkeypatch.setattr(copy_stream, "_WAITS", 200)
    monkeypatch.setattr(copy_stream, "_WAIT_AFTER", 0)
    tuples = [struct.pack(">hi", 1, 80) + b"%080d" % g for g in range(100000)]
    copy_done = b"c" + struct.pack(">i", 4)
    messages = b"".join(b"d" + struct.pack(">i", 4 + len(t)) + t for t in tuples[1:])
    batches: list[int] = []
    framed = copy_stream._leading_copy_data
    monkeypatch.setattr(
        copy_stream,
        "_leading_copy_data",
        lambda buffered, count: (batches.append(len(buffered)), framed(buffered, count))[1],
    )
    ours, theirs = _tcp_pair()
    chunks: list[Chunk] = []
    stream = _stream_on(ours, chunks.append)
    sender = threading.Thread(target=_serve_copy, args=(theirs, messages + copy_done))
    sender.start()
    # WHEN pg8000 hands over the first tuple and the stream drains the rest
    stream.write(tuples[0])
    stream.flush()
    sender.join()
    # THEN every tuple arrives, in order, CopyDone is left for pg8000, and the tuples
    # were framed in batches of 32 KB and more on average (measured: about 86 KB; without
    # the wait, the sender's 8 KB flushes one or two at a time: about 11 KB)
    got = [bytes(c.data[s : s + len(tuples[0])]) for c in chunks for s in c.starts.tolist()]
    assert got == tuples
    assert stream._sock.peek(1)[:5] == copy_done
    assert len(batches) < sum(batches) / (32 << 10)
    ours.close()
    theirs.close()


def test_a_small_copy_never_waits(
    conn: pg8000.native.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a widened connection WHEN COPYs of up to 3,000 rows (well under 1 MiB) run
    widen_read_buffer(conn)
    sleeps = _Sleeps(socket.socket())
    monkeypatch.setattr(copy_stream.time, "sleep", sleeps)
    for rows in (0, 10, 1000, 3000):
        got, _ = _copied(conn, f"SELECT g, 'r' FROM generate_series(1, {rows}) g")
        assert got == [(g, "r") for g in range(1, rows + 1)]
    # THEN the stream never slept: a small COPY pays no wait, its end none either
    assert sleeps.count == 0


def test_an_error_after_the_wait_has_engaged_is_left_for_pg8000(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a server sending 2 MiB of tuples in paced 8 KB flushes (past _WAIT_AFTER, so the
    # stream waits for the socket), then an ErrorResponse instead of CopyDone
    tuples = [struct.pack(">hi", 1, 80) + b"%080d" % g for g in range(24000)]
    error = b"E" + struct.pack(">i", 4 + 8) + b"SERROR\x00\x00"
    messages = b"".join(b"d" + struct.pack(">i", 4 + len(t)) + t for t in tuples[1:])
    sleeps = _Sleeps(socket.socket())
    slept = time.sleep
    monkeypatch.setattr(copy_stream.time, "sleep", lambda s: (sleeps(s), slept(s)))
    ours, theirs = _tcp_pair()
    chunks: list[Chunk] = []
    stream = _stream_on(ours, chunks.append)
    sender = threading.Thread(target=_serve_copy, args=(theirs, messages + error))
    sender.start()
    # WHEN the stream drains the COPY
    stream.write(tuples[0])
    stream.flush()
    sender.join()
    # THEN it waited on the way, every tuple before the error arrived, and the error is
    # the next message pg8000 reads, whole
    got = [bytes(c.data[s : s + len(tuples[0])]) for c in chunks for s in c.starts.tolist()]
    assert sleeps.count > 0
    assert got == tuples
    assert stream._sock.peek(1)[: len(error)] == error
    ours.close()
    theirs.close()
