"""The COPY fast path: the one module that relies on pg8000's private internals.

pg8000 hands COPY OUT data to a stream one CopyData message (one row) at a time, through
several Python calls a message; that dispatch would be the extract's cost. This module
reads the rows already buffered on the connection in bulk instead, which relies on three
things pg8000 does not promise:

- ``conn._sock``: the buffered socket file pg8000 reads messages from (a
  ``BufferedRWPair`` with ``peek``/``read``), which ``widen_read_buffer`` may replace;
- ``conn._usock``: the socket under it (plain or TLS);
- ``conn._transaction_status``: the last ReadyForQuery status (``in_transaction``).

``tests/integration/test_copy_stream.py`` asserts each of them on a real connection and
that the fast path engages, so a driver upgrade that breaks them fails there first. If
they are missing at run time, rows simply arrive one by one (correct, slower).
"""

from __future__ import annotations

import fcntl
import io
import socket
import ssl
import struct
import termios
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pg8000.native

from totes_ingest.pg_binary import HEADER_BYTES, PADDING, SIGNATURE, TRAILER, Int64s, be_at

# COPY bytes handed on at a time (whole tuples: a larger one is a chunk of its own).
CHUNK_BYTES = 2 << 20
_IN_TRANSACTION = (b"T", b"E")  # pg8000's last ReadyForQuery status: in a (failed) block


def in_transaction(conn: pg8000.native.Connection) -> bool:
    """Whether ``conn`` is inside a transaction block (failed or not)."""
    return getattr(conn, "_transaction_status", None) in _IN_TRANSACTION


_COPY_DATA = ord("d")
_LENGTH = struct.Struct("!i")
_VECTOR_MIN_BYTES = 4 << 10  # below this, numpy's per-call cost outweighs the loop's
_READ_BUFFER_BYTES = 1 << 20
# When a peek frames less than this, the stream lets the socket fill before the next one
# (see CopyStream._await_data): fewer, larger batches, the per-batch cost paid less often.
_FILL_BYTES = 256 << 10
_WAIT_SECONDS = 0.0005
_WAIT_AFTER = 1 << 20  # bytes a COPY sends before the stream waits: small COPYs never do
_WAITS = 8  # at most 4 ms a batch, and only while the data keeps arriving
_NATIVE_INT = struct.Struct("i")  # FIONREAD's answer
_widened: weakref.WeakSet[Any] = weakref.WeakSet()


def widen_read_buffer(conn: pg8000.native.Connection) -> None:
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


class CopyStream:
    """The stream pg8000's binary COPY OUT writes to: tuples, gathered into chunks.

    pg8000 dispatches every protocol message through several Python calls, and COPY
    sends one CopyData message per tuple, so that dispatch would be the extract's cost.
    When pg8000 hands over a tuple, this stream also takes every CopyData message already
    buffered on the connection (peeking, then consuming exactly the whole messages it
    framed) and returns at the first other message (CopyDone, an error, a notice),
    which pg8000 reads as usual: the protocol state stays pg8000's. If the socket file
    is not the buffered reader this relies on, tuples simply arrive one by one.

    Each chunk handed to ``emit`` holds whole tuples and where each starts, so it is
    decoded on its own, whatever a tuple's size. Several COPY statements may write into
    one stream in turn (each has its own header and trailer): their tuples follow on.
    """

    def __init__(
        self,
        conn: pg8000.native.Connection,
        emit: Callable[[Chunk], None],
        field_count: int,
        chunk_bytes: int | None = None,
    ) -> None:
        self._emit = emit
        self._field_count = field_count
        self._chunk_bytes = chunk_bytes or CHUNK_BYTES
        self._parts: list[bytes | memoryview] = []
        self._starts: list[npt.NDArray[np.int64] | int] = []
        self._size = 0
        self.drained_rows = 0  # tuples taken from the buffer in bulk: the fast path at work
        sock = getattr(conn, "_sock", None)
        usable = callable(getattr(sock, "peek", None)) and callable(getattr(sock, "read", None))
        self._sock: Any = sock if usable else None
        usock = getattr(conn, "_usock", None)
        self._fd: int | None = None  # a plain socket's: the stream may wait for it to fill
        if (
            usable
            and isinstance(usock, socket.socket)
            and not isinstance(usock, ssl.SSLSocket)
            and usock.family != socket.AF_UNIX  # its queue holds less than _FILL_BYTES
        ):
            self._fd = usock.fileno()
        self._queued = bytearray(_NATIVE_INT.size)
        self._copied = 0

    def write(self, data: bytes) -> None:
        """One CopyData payload from pg8000 (the first of a COPY carries the header)."""
        if data[: len(SIGNATURE)] == SIGNATURE:
            (extension,) = _LENGTH.unpack_from(data, HEADER_BYTES - 4)
            data = data[HEADER_BYTES + extension :]
            self._copied = 0  # a new COPY: no waiting until it has proved large
        self._add(data)
        if self._sock is not None:
            self._drain(self._sock)
        if self._size >= self._chunk_bytes:
            self.flush()

    def flush(self) -> None:
        """Hand over the tuples gathered so far (called at the end of the COPY, too)."""
        if self._parts:
            data = b"".join([*self._parts, PADDING])
            starts = [np.atleast_1d(s) for s in self._starts]
            self._parts.clear()
            self._starts.clear()
            self._size = 0
            self._emit(Chunk(data, np.concatenate(starts).astype(np.int64, copy=False)))

    def _add(self, payload: bytes | memoryview) -> None:
        """One tuple's payload (the trailer, which is not a tuple, is dropped)."""
        if len(payload) == len(TRAILER) and bytes(payload) == TRAILER:
            return
        self._starts.append(self._size)
        self._parts.append(payload)
        self._size += len(payload)

    def _drain(self, sock: Any) -> None:
        unpack = _LENGTH.unpack_from
        while True:
            buffered: bytes = sock.peek(1)  # what is buffered; reads only if nothing is
            if not buffered or buffered[0] != _COPY_DATA:
                return
            end, pos = len(buffered), 0
            view = memoryview(buffered)
            if end >= _VECTOR_MIN_BYTES:
                pos, starts = _leading_copy_data(buffered, self._field_count)
                if pos:
                    self._starts.append(starts + (5 + self._size))
                    self._parts.append(view[:pos])
                    self._size += pos
                    self.drained_rows += len(starts)
            while pos + 5 <= end and buffered[pos] == _COPY_DATA:  # the rest, one by one
                stop = pos + 1 + unpack(buffered, pos + 1)[0]
                if stop > end:
                    break
                self._add(view[pos + 5 : stop])
                self.drained_rows += 1
                pos = stop
            if pos == 0:  # one CopyData message larger than the buffer: read it whole
                size = unpack(_read_exactly(sock, 5), 1)[0]
                self._add(_read_exactly(sock, size - 4))
                self.drained_rows += 1
            else:
                sock.read(pos)  # already buffered: consumes exactly the framed messages
            if self._size >= self._chunk_bytes:
                self.flush()
            self._copied += end
            if pos < end and buffered[pos] != _COPY_DATA:
                return  # another message follows: the COPY has ended, nothing to wait for
            if end < _FILL_BYTES and self._fd is not None and self._copied >= _WAIT_AFTER:
                self._await_data(self._fd)

    def _await_data(self, fd: int) -> None:
        """Sleep (a few times ``_WAIT_SECONDS`` at most) until the kernel holds
        ``_FILL_BYTES`` for this socket, or stops receiving more.

        A client faster than the server would otherwise frame each of the server's 8 KB
        flushes on its own, paying the per-batch cost (peeks, numpy calls) every 8 KB:
        in a 4M-row extract, 16,000 batches. The wait ends when nothing more arrives
        between two looks (the server is done, or waits on a full receive buffer), so it
        does not stall the server. ``_drain`` never calls it once the COPY's end is in
        the buffer, before the COPY has sent ``_WAIT_AFTER`` bytes (a small COPY pays
        nothing: measured, a 10-row COPY went 0.45 -> 1.0 ms without that), nor on a
        unix socket, whose queue holds less than ``_FILL_BYTES``.
        """
        before = -1
        for _ in range(_WAITS):
            fcntl.ioctl(fd, termios.FIONREAD, self._queued)  # bytes the kernel holds for us
            (queued,) = _NATIVE_INT.unpack(self._queued)
            if queued >= _FILL_BYTES or queued == before:
                return
            before = queued
            time.sleep(_WAIT_SECONDS)


def _leading_copy_data(buffered: bytes, field_count: int) -> tuple[int, Int64s]:
    """The CopyData messages at the start of ``buffered``, framed without a Python loop.

    Returns (bytes they span, where each message starts). A tuple's message is ``d``, a
    32-bit length and the 16-bit field count, so candidates are found by that pattern
    and kept if the message they frame ends at another candidate; then only the run
    chained from position 0 (each message ending exactly where the next starts) counts.
    A false candidate inside a value can only end the run early: the caller frames the
    rest one message at a time. The result is always exact.
    """
    data = np.frombuffer(buffered, dtype=np.uint8)
    size = len(data)
    starts = np.flatnonzero(data[:-6] == _COPY_DATA)  # the rarest test first, then the count
    starts = starts[
        (data[starts + 5] == field_count >> 8) & (data[starts + 6] == field_count & 0xFF)
    ]
    if len(starts) == 0 or starts[0] != 0:
        return 0, starts[:0]
    stops = starts + 1 + be_at(data, ">i4", starts + 1).astype(np.int64)
    broken = np.flatnonzero(stops[:-1] != starts[1:])
    if len(broken):  # false candidates inside values: keep those whose message ends at one
        following = np.minimum(np.searchsorted(starts, stops), len(starts) - 1)
        chained = (starts[following] == stops) | (stops >= size)
        starts, stops = starts[chained], stops[chained]
        broken = np.flatnonzero(stops[:-1] != starts[1:])
    count = int(broken[0]) + 1 if len(broken) else len(starts)
    while count and stops[count - 1] > size:  # the last message may be cut off
        count -= 1
    if count == 0 or starts[0] != 0:
        return 0, starts[:0]
    return int(stops[count - 1]), starts[:count]


@dataclass(frozen=True)
class Chunk:
    """Whole binary COPY tuples, and where each starts in ``data`` (which ends with
    ``pg_binary.PADDING``)."""

    data: bytes
    starts: Int64s


def _read_exactly(sock: Any, size: int) -> bytes:
    data: bytes = sock.read(size)
    if len(data) != size:
        raise pg8000.exceptions.InterfaceError("network error: connection closed mid-COPY")
    return data
