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

import io
import socket
import ssl
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pg8000.native

# CSV bytes handed on at a time (whole rows: a larger row is a chunk of its own).
CHUNK_BYTES = 2 << 20
_IN_TRANSACTION = (b"T", b"E")  # pg8000's last ReadyForQuery status: in a (failed) block


def in_transaction(conn: pg8000.native.Connection) -> bool:
    """Whether ``conn`` is inside a transaction block (failed or not)."""
    return getattr(conn, "_transaction_status", None) in _IN_TRANSACTION


_COPY_DATA = ord("d")
_LENGTH = struct.Struct("!i")
_VECTOR_MIN_BYTES = 16 << 10  # below this, numpy's per-call cost outweighs the loop's
_READ_BUFFER_BYTES = 1 << 20
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
        self,
        conn: pg8000.native.Connection,
        emit: Callable[[Chunk], None],
        chunk_bytes: int | None = None,
    ) -> None:
        self._emit = emit
        self._chunk_bytes = chunk_bytes or CHUNK_BYTES
        self._parts: list[bytes | memoryview] = []
        self._size = 0
        self._rows = 0
        self.drained_rows = 0  # rows taken from the buffer in bulk: the fast path at work
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
            self._emit(Chunk(data, line_breaks_in_values=not plain))

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
                self.drained_rows += 1
            else:
                sock.read(pos)  # already buffered: consumes exactly the parsed messages
                self._size += pos
                self._rows += rows
                self.drained_rows += rows
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
class Chunk:
    """Whole CSV rows, and whether any value in them holds a line break."""

    data: bytes
    line_breaks_in_values: bool


def _read_exactly(sock: Any, size: int) -> bytes:
    data: bytes = sock.read(size)
    if len(data) != size:
        raise pg8000.exceptions.InterfaceError("network error: connection closed mid-COPY")
    return data
