"""PostgreSQL's binary COPY format, read with numpy: no Python call per row or value.

A binary COPY sends one tuple per CopyData message: a 16-bit field count, then each
field as a 32-bit length (-1 for NULL) and that many bytes, all big-endian. The first
message starts with a 19-byte header and the last is a 2-byte trailer (``\\xff\\xff``).

Given a buffer and where each tuple starts, ``fields`` walks every tuple at once, field
by field, to the position and length of each value; the helpers below turn those into
Arrow buffers (fixed-width values gathered and byte-swapped, variable-length values
gathered into one data buffer). Which helper a column uses is the type mapping's choice
(``pg_types``); this module knows the format, not the types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER_BYTES = len(SIGNATURE) + 8  # signature, flags, header extension length (0)
TRAILER = b"\xff\xff"
# Zero bytes after a chunk's tuples: a NULL's position (the end of its tuple) then still
# leaves room for the widest fixed-width value (a uuid), so gathers need no bounds check.
PADDING = bytes(16)

Int64s = npt.NDArray[np.int64]
# Gathering variable-length values byte by byte costs 8 bytes of index a byte; above
# this mean length, slicing value by value is cheaper.
_GATHER_MEAN_BYTES = 256


@dataclass(frozen=True)
class Values:
    """One field of many tuples: where each value starts in ``data`` and its length.

    ``lengths`` is -1 for NULL; a NULL's position points at valid bytes of ``data``
    (so fixed-width gathers need no special case) but its value means nothing.
    """

    data: npt.NDArray[np.uint8]
    positions: Int64s
    lengths: npt.NDArray[np.int32]
    # The same values already gathered a row at a time (``fields`` with widths): each
    # row of ``rows`` holds this field's value at ``row_offset``.
    rows: npt.NDArray[np.uint8] | None = None
    row_offset: int = 0

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def nulls(self) -> npt.NDArray[np.bool_]:
        return self.lengths < 0

    @property
    def has_nulls(self) -> bool:
        return bool(len(self.lengths)) and int(self.lengths.min()) < 0

    def big_endian(self, dtype: str, offset: int = 0) -> npt.NDArray[Any]:
        """The ``dtype`` (``">i4"``...) value at each position (+ ``offset``), native order."""
        rows, start = self.rows, self.row_offset + offset
        if rows is not None and start + np.dtype(dtype).itemsize <= rows.shape[1]:
            column = np.ndarray(
                (len(rows),), dtype=dtype, buffer=rows, offset=start, strides=(rows.shape[1],)
            )
            return column.astype(np.dtype(dtype).newbyteorder("="))
        return be_at(self.data, dtype, self.positions + offset)


def gathered(values: Values) -> Values:
    """``values`` with each value's bytes gathered into a row of its own, as wide as the
    widest value (one gather), so that reading several fields of every value
    (``big_endian`` at several offsets) costs strided views instead of a gather each.

    Every read of a row stays inside it, whatever the value's length: a NULL's row is
    read from the buffer's start (its bytes mean nothing), and if the widest row would
    reach past PADDING, the gather reads a padded copy of the buffer.
    """
    if values.rows is not None or not len(values):
        return values
    width = int(values.lengths.max())
    if width <= 0:
        return values
    starts = np.where(values.nulls, 0, values.positions)
    data = values.data
    if int(starts.max()) + width > len(data):  # a short value near the end: rare
        data = np.concatenate([data, np.zeros(width, dtype=np.uint8)])
    rows = rows_at(data, starts, width).view(np.uint8).reshape(-1, width)
    return Values(values.data, values.positions, values.lengths, rows)


def be_at(data: npt.NDArray[np.uint8], dtype: str, positions: Int64s) -> npt.NDArray[Any]:
    """The big-endian ``dtype`` values at byte ``positions`` of ``data``, in native order.

    Every position must leave room for a whole value (see PADDING).
    """
    width = np.dtype(dtype).itemsize
    if len(data) < width:
        return np.zeros(len(positions), dtype=np.dtype(dtype).newbyteorder("="))
    # every (overlapping, unaligned) value of the buffer, one a byte: a view, no copy
    view = np.ndarray((len(data) - width + 1,), dtype=dtype, buffer=data, strides=(1,))
    values = view[positions]
    values.byteswap(inplace=True)
    return values.view(values.dtype.newbyteorder("="))


def rows_at(data: npt.NDArray[np.uint8], positions: Int64s, width: int) -> npt.NDArray[Any]:
    """The ``width`` bytes at each of ``positions`` (each leaves room for them), gathered
    into one contiguous array: one copy a position, not one index a byte (4x faster)."""
    if width == 0 or len(positions) == 0:
        return np.zeros(0, dtype=np.uint8)
    every = np.ndarray(
        (len(data) - width + 1,), dtype=np.dtype((np.void, width)), buffer=data, strides=(1,)
    )
    return every[positions]


def fields(
    data: bytes, starts: Int64s, count: int, widths: Sequence[int | None] | None = None
) -> list[Values]:
    """The ``count`` fields of the tuples starting at ``starts`` in ``data`` (which ends
    with PADDING).

    ``widths``: each field's fixed width on the wire, if it has one (None: variable). A
    run of fixed-width fields is gathered a row at a time, lengths and values together,
    instead of a gather a field; a run holding a NULL anywhere is walked field by field.
    Raises ValueError if a tuple does not hold ``count`` fields or overruns the buffer.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    if len(starts) and not np.all(be_at(buffer, ">i2", starts) == count):
        raise ValueError(f"a COPY tuple does not hold {count} fields")
    position = starts + 2  # a new array: the loop below adds to it in place
    out: list[Values] = []
    runs = _fixed_runs(widths, count)
    while len(out) < count:
        run = runs.get(len(out))
        if run is not None and (packed := _packed_run(buffer, position, run)) is not None:
            out.extend(packed)
            position = position + sum(4 + w for w in run)
            continue
        lengths = be_at(buffer, ">i4", position)
        position += 4
        out.append(Values(buffer, position, lengths))
        following = position + lengths  # a NULL (-1) moves back one byte: undone below
        position = np.maximum(following, position, out=following)
    if len(position) and position.max() > len(buffer) - len(PADDING):
        raise ValueError("a COPY tuple overruns its message")
    return out


def _fixed_runs(widths: Sequence[int | None] | None, count: int) -> dict[int, list[int]]:
    """Where each run of consecutive fixed-width fields starts, and its widths."""
    runs: dict[int, list[int]] = {}
    if widths is None or len(widths) != count:
        return runs
    start = 0
    while start < count:
        stop = start
        while stop < count and widths[stop] is not None:
            stop += 1
        if stop > start:
            runs[start] = [w for w in widths[start:stop] if w is not None]
        start = stop + 1
    return runs


def _packed_run(
    buffer: npt.NDArray[np.uint8], position: Int64s, run: list[int]
) -> list[Values] | None:
    """The run's fields, gathered a row at a time; None if a NULL (or the buffer's end)
    is in the way."""
    size = sum(4 + w for w in run)
    if not len(position) or int(position.max()) + size > len(buffer):
        return None
    rows = rows_at(buffer, position, size).view(np.uint8).reshape(len(position), size)
    out, offset = [], 0
    for width in run:
        lengths = np.ndarray(
            (len(rows),), dtype=">i4", buffer=rows, offset=offset, strides=(size,)
        ).astype(np.int32)
        if lengths.min() != width or lengths.max() != width:
            return None
        out.append(Values(buffer, position + offset + 4, lengths, rows, offset + 4))
        offset += 4 + width
    return out


def validity(values: Values) -> pa.Buffer | None:
    """Arrow's validity bitmap of ``values`` (None when none is NULL)."""
    if not values.has_nulls:
        return None
    return pa.py_buffer(np.packbits(values.lengths >= 0, bitorder="little"))


def from_numpy(
    arrow_type: pa.DataType, native: npt.NDArray[Any], valid: pa.Buffer | None
) -> pa.Array:
    """``native`` (numbers in ``arrow_type``'s layout; booleans are bit-packed here) as an
    Arrow array with the validity bitmap ``valid``.

    Built from buffers rather than with ``pa.array``, whose first call on a numpy array
    imports pandas when it is installed (half a second of a cold start, for nothing).
    """
    if native.dtype == np.bool_:
        data = pa.py_buffer(np.packbits(native, bitorder="little"))
    else:
        data = pa.py_buffer(np.ascontiguousarray(native))
    return pa.Array.from_buffers(arrow_type, len(native), [valid, data])


def fixed(values: Values, arrow_type: pa.DataType, dtype: str) -> pa.Array:
    """Fixed-width values (``dtype`` big-endian on the wire) as an ``arrow_type`` array."""
    width = np.dtype(dtype).itemsize
    lengths = values.lengths[values.lengths >= 0] if values.has_nulls else values.lengths
    if len(lengths) and not (lengths.min() == lengths.max() == width):
        raise ValueError(f"expected {width}-byte values")
    native = values.big_endian(dtype)
    return pa.Array.from_buffers(arrow_type, len(values), [validity(values), pa.py_buffer(native)])


def variable(values: Values, arrow_type: pa.DataType, skip: int = 0) -> pa.Array:
    """Variable-length values (their bytes, less ``skip`` leading ones) as a string or
    binary ``arrow_type`` array. Strings are checked to be valid UTF-8."""
    lengths = np.maximum(values.lengths.astype(np.int64) - skip, 0)
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    if total > np.iinfo(np.int32).max:
        raise ValueError("a chunk's values exceed 2 GiB")
    positions = values.positions + skip
    width = int(lengths[0]) if len(lengths) else 0
    if total == 0:
        payload = b""
    elif total == width * len(values) and np.all(lengths == width):  # one width: codes, dates
        payload = rows_at(values.data, positions, width).tobytes()
    elif total <= _GATHER_MEAN_BYTES * max(1, len(values)):
        index = np.repeat(positions - offsets[:-1], lengths) + np.arange(total)
        payload = values.data[index].tobytes()
    else:
        view = values.data.data
        payload = b"".join(
            view[p : p + n] for p, n in zip(positions.tolist(), lengths.tolist(), strict=True)
        )
    array = pa.Array.from_buffers(
        arrow_type,
        len(values),
        [validity(values), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(payload)],
    )
    if pa.types.is_string(arrow_type):
        array.validate(full=True)  # UTF-8, as a SQL_ASCII server may send anything
    return array


def array_elements(values: Values) -> tuple[npt.NDArray[np.int32], Values]:
    """The elements of one-dimensional arrays: (elements per array, the elements).

    An array value is a header (dimensions, has-nulls flag, element type), then per
    dimension its size and lower bound, then each element as a length and bytes. NULL
    and empty arrays have no elements. Raises ValueError on a multi-dimensional value.
    """
    valid = values.lengths >= 0
    dimensions = np.where(valid, values.big_endian(">i4"), 0)
    if np.any(dimensions > 1):
        raise ValueError("multi-dimensional array")
    counts = np.where(dimensions == 1, values.big_endian(">i4", 12), 0).astype(np.int32)
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    positions = np.zeros(int(offsets[-1]), dtype=np.int64)
    lengths = np.zeros(int(offsets[-1]), dtype=np.int32)
    cursor = values.positions + 20  # past the header and the one dimension
    for k in range(int(counts.max(initial=0))):  # element k of every array that has one
        has = np.flatnonzero(counts > k)
        at = cursor[has]
        element_lengths = be_at(values.data, ">i4", at).astype(np.int32)
        positions[offsets[has] + k] = at + 4
        lengths[offsets[has] + k] = element_lengths
        cursor[has] = at + 4 + np.maximum(element_lengths, 0)
    return counts, Values(values.data, positions, lengths)
