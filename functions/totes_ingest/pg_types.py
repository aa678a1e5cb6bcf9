"""The type mapping: how each PostgreSQL type lands in Arrow (and so in Parquet).

This module owns every decision about a type, and no other module makes one: which Arrow
type a PostgreSQL type maps to (``map_type``, from the catalog facts that ``catalog``
reads), how the extract selects, parses and finishes a column of it (``plan``), and how a
pg8000 Python value of it is conformed for the small-result path (``conform``). It does
no I/O, so its rules are unit-tested without a database; changing how a type lands in
Parquet means changing this file (and its tests) only.

A table's schema comes from the catalog, never from the rows of a run: every file of a
table has the same schema, an all-NULL column keeps its type and an empty window is
still a well-typed, zero-row file. Each field carries its PostgreSQL type
(``format_type``) in its metadata under ``b"pg_type"``.

Two profiles (``PARQUET_TYPE_PROFILE``, see ``config``). The default, ``portable``,
gives every column a type that DuckDB, Polars, pandas/pyarrow and Spark read and that
Athena/Glue can declare, without changing a value; ``extension`` is the former mapping
(Arrow's uuid/json extension types, decimal256, time64, uint32), opt-in. The mapping
(domains are mapped as their base type; "ext." marks where ``extension`` differs):

=====================================  =============================================
PostgreSQL                             Arrow
=====================================  =============================================
smallint / integer / bigint            int16 / int32 / int64
oid                                    int64 (ext.: uint32)
numeric(p, s), p <= 38                 decimal128(p, s) (negative scale s:
                                       decimal(p - s, 0); scale above precision:
                                       decimal(s, s))
numeric(p, s), p > 38                  string: PostgreSQL's exact text (ext.:
                                       decimal256 up to 76 digits)
numeric (unconstrained)                string holding PostgreSQL's exact text, e.g.
                                       ``"1.50"``, ``"NaN"``, ``"Infinity"``: no float,
                                       no rounding, trailing zeros kept
real / double precision                float32 / float64 (NaN and +-Infinity kept)
boolean                                bool
text, varchar, char(n), name, "char"   string (char(n) keeps its padding)
inet, cidr, macaddr, macaddr8, xml     string (PostgreSQL's text form)
enum types                             string (the label)
date                                   date32
time                                   string ``HH:MM:SS.ffffff``, fixed width, 24:00:00
                                       kept (ext.: time64[us], 24:00:00 refused)
timetz                                 string ``HH:MM:SS.ffffff+HH:MM`` (the value's own
                                       offset; ext.: refused)
timestamp                              timestamp[us]
timestamptz                            timestamp[us, tz=UTC]
interval                               struct<months: int32, days: int32,
                                       microseconds: int64>: PostgreSQL's own three
                                       fields, exact (Parquet cannot store Arrow's
                                       month_day_nano interval)
uuid                                   string: canonical lower-case text (ext.:
                                       arrow.uuid, Parquet UUID)
json / jsonb                           string: the server's text of the value (ext.:
                                       arrow.json, Parquet JSON)
bytea                                  binary
T[] (one dimension)                    list<element: T> (lower bounds are not kept)
=====================================  =============================================

Anything else (money, geometric, range, composite, bit strings...) raises
UnsupportedColumnType naming the table and the column: no silent lossy fallback.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from functools import partial
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from totes_ingest.config import TYPE_PROFILES, TypeProfile
from totes_ingest.errors import UnsupportedColumnType
from totes_ingest.pg_binary import (
    Int64s,
    Values,
    array_elements,
    fixed,
    from_numpy,
    gathered,
    validity,
    variable,
)

PG_TYPE_KEY = b"pg_type"
INTERVAL = pa.struct(
    [
        pa.field("months", pa.int32()),
        pa.field("days", pa.int32()),
        pa.field("microseconds", pa.int64()),
    ]
)
LIST_ITEM_NAME = "element"  # the name Parquet's compliant LIST layout reads back

# How a column's values travel in the binary COPY (see ``plan``): "fixed" as big-endian
# numbers of their Arrow type's width; "text" as their UTF-8 bytes; "text_cast" selected
# as ``::text`` (their binary form is not their text); the others by their own layout.
Profile = TypeProfile
PROFILES = TYPE_PROFILES

Kind = Literal[
    "fixed",
    "oid",
    "timetz",
    "bool",
    "text",
    "text_cast",
    "json",
    "jsonb",
    "numeric",
    "date",
    "time",
    "timestamp",
    "interval",
    "uuid",
    "bytea",
    "array",
]

_SIMPLE: dict[str, tuple[pa.DataType, Kind]] = {
    "int2": (pa.int16(), "fixed"),
    "int4": (pa.int32(), "fixed"),
    "int8": (pa.int64(), "fixed"),
    "oid": (pa.uint32(), "fixed"),
    "float4": (pa.float32(), "fixed"),
    "float8": (pa.float64(), "fixed"),
    "bool": (pa.bool_(), "bool"),
    "text": (pa.string(), "text"),
    "varchar": (pa.string(), "text"),
    "bpchar": (pa.string(), "text"),
    "name": (pa.string(), "text"),
    "char": (pa.string(), "text_cast"),
    "inet": (pa.string(), "text_cast"),
    "cidr": (pa.string(), "text_cast"),
    "macaddr": (pa.string(), "text_cast"),
    "macaddr8": (pa.string(), "text_cast"),
    "xml": (pa.string(), "text_cast"),
    "date": (pa.date32(), "date"),
    "time": (pa.time64("us"), "time"),
    "timestamp": (pa.timestamp("us"), "timestamp"),
    "timestamptz": (pa.timestamp("us", tz="UTC"), "timestamp"),
    "interval": (INTERVAL, "interval"),
    "uuid": (pa.uuid(), "uuid"),
    "json": (pa.json_(), "json"),
    "jsonb": (pa.json_(), "jsonb"),
    "bytea": (pa.binary(), "bytea"),
}
# Where the portable profile (the default) differs: every engine reads these, and
# Athena/Glue can declare them; the values are unchanged (see the module's table).
_PORTABLE: dict[str, tuple[pa.DataType, Kind]] = {
    "oid": (pa.int64(), "oid"),
    "time": (pa.string(), "time"),
    "timetz": (pa.string(), "timetz"),
    "uuid": (pa.string(), "uuid"),
    "json": (pa.string(), "json"),
    "jsonb": (pa.string(), "jsonb"),
}


@dataclass(frozen=True)
class Column:
    """One column as the extract sees it: its name, PostgreSQL and Arrow types."""

    name: str
    pg_type: str
    arrow_type: pa.DataType
    kind: Kind
    element: Column | None = None  # the element of an array column

    @property
    def field(self) -> pa.Field:
        return pa.field(self.name, self.arrow_type, metadata={PG_TYPE_KEY: self.pg_type})


@dataclass(frozen=True)
class CatalogType:
    """What ``pg_type`` says of one type (by oid): all the mapping needs to know."""

    name: str
    namespace: str
    typtype: str  # b base, d domain, e enum, c composite, r range...
    category: str  # A for arrays
    element_oid: int
    base_oid: int  # a domain's base type
    base_typmod: int


def schema_of(columns: Sequence[Column]) -> pa.Schema:
    return pa.schema([column.field for column in columns])


def map_type(
    name: str,
    pg_type: str,
    oid: int,
    typmod: int,
    lookup: Callable[[int], CatalogType],
    profile: Profile = "portable",
) -> Column:
    """The column ``name`` of type ``oid`` (``pg_type`` is its ``format_type``).

    ``lookup`` gives the catalog facts of a type oid; ``profile`` picks the mapping (see
    the module's table). Raises UnsupportedColumnType (for the caller to label with the
    table) if the type has no faithful Arrow mapping.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown type profile {profile!r}: one of {', '.join(PROFILES)}")
    types = {**_SIMPLE, **_PORTABLE} if profile == "portable" else _SIMPLE

    def unsupported() -> UnsupportedColumnType:
        return UnsupportedColumnType(
            f"column {name!r} has type {pg_type}, which has no faithful Arrow mapping"
        )

    def resolve(oid: int, typmod: int, in_array: bool) -> tuple[pa.DataType, Kind, Column | None]:
        typ = lookup(oid)
        while typ.typtype == "d":  # a domain: its base type, with the domain's typmod
            typmod = typ.base_typmod
            typ = lookup(typ.base_oid)
        if typ.typtype == "e":
            return pa.string(), "text", None  # an enum's binary form is its label
        if typ.category == "A" and typ.element_oid != 0:
            if in_array:
                raise unsupported()
            arrow, kind, _ = resolve(typ.element_oid, typmod, True)
            element = Column(LIST_ITEM_NAME, pg_type, arrow, kind)
            return pa.list_(pa.field(LIST_ITEM_NAME, arrow)), "array", element
        if typ.typtype != "b" or typ.namespace != "pg_catalog":
            raise unsupported()
        if typ.name == "numeric":
            return numeric_type(typmod, profile), "numeric", None
        try:
            arrow, kind = types[typ.name]
        except KeyError:
            raise unsupported() from None
        return arrow, kind, None

    arrow, kind, element = resolve(oid, typmod, False)
    return Column(name, pg_type, arrow, kind, element)


def numeric_type(typmod: int, profile: Profile = "portable") -> pa.DataType:
    """decimal128 for ``numeric(p, s)`` up to 38 digits (decimal256 up to 76 in the
    extension profile); string (PostgreSQL's exact text) otherwise."""
    if typmod < 4:  # -1: unconstrained
        return pa.string()
    precision = ((typmod - 4) >> 16) & 0xFFFF
    scale = (((typmod - 4) & 0x7FF) ^ 1024) - 1024  # an 11-bit signed field (PG 15+)
    if scale < 0:
        precision, scale = precision - scale, 0
    precision = max(precision, scale)
    if precision <= 38:
        return pa.decimal128(precision, scale)
    if precision <= 76 and profile == "extension":
        return pa.decimal256(precision, scale)
    return pa.string()


# --- the extract's plan of a column: its SELECT expression and how its values decode ---

Decode = Callable[[Values], pa.Array]

_FIXED_WIRE = {
    pa.int16(): ">i2",
    pa.int32(): ">i4",
    pa.int64(): ">i8",
    pa.uint32(): ">u4",
    pa.float32(): ">f4",
    pa.float64(): ">f8",
}
_WIRE_WIDTHS = {"oid": 4, "bool": 1, "date": 4, "timestamp": 8}
_EPOCH_DAYS = 10_957  # PostgreSQL counts from 2000-01-01, Arrow from 1970-01-01
_EPOCH_MICROS = _EPOCH_DAYS * 86_400_000_000
_FIRST_DAY = -719_162  # 0001-01-01, days from 1970: earlier dates are BC
_FIRST_MICROS = _FIRST_DAY * 86_400_000_000 - _EPOCH_MICROS  # 0001-01-01, PostgreSQL's
_INT32 = np.iinfo(np.int32)
_INT64 = np.iinfo(np.int64)
_LAST_MICROS = _INT64.max - _EPOCH_MICROS  # PostgreSQL's microseconds that Arrow can hold
_DAY_MICROS = 86_400_000_000
_INT64_DIGITS = 18  # numeric(p, s) with p up to this is decoded from its binary form
_HORNER_DIGITS = 4  # base-10000 digits read as one int64 at once (16 decimal digits)
_POW10 = np.array([10**i for i in range(_INT64_DIGITS + 1)], dtype=np.int64)
_NUMERIC_NEG, _NUMERIC_NAN, _NUMERIC_PINF, _NUMERIC_NINF = 0x4000, 0xC000, 0xD000, 0xF000


@dataclass(frozen=True)
class Plan:
    """How the extract reads one column: the SELECT expression (one binary COPY field)
    and the function turning that field's values into the column's Arrow array."""

    column: Column
    expr: str
    decode: Decode
    as_text: bool = False  # selected as ``::text``: an array of it is selected ``::text[]``
    width: int | None = None  # bytes of every non-NULL value on the wire, if fixed


def plan(column: Column, ref: str) -> Plan:
    """How ``column`` (the SQL expression ``ref``) is selected and decoded."""
    arrow_type, kind = column.arrow_type, column.kind
    if kind == "array":
        assert column.element is not None
        return _array_plan(column, column.element, ref)
    if kind in ("text_cast", "jsonb") or (kind == "numeric" and not _is_decimal(arrow_type)):
        return Plan(column, f"({ref})::text", _TEXT_DECODERS[kind](arrow_type), as_text=True)
    if kind == "numeric" and arrow_type.precision <= _INT64_DIGITS:
        return Plan(column, ref, partial(_small_decimal, arrow_type))
    if kind == "numeric":
        # PostgreSQL's exact text, cast by Arrow, which refuses any rounding and NaN.
        return Plan(column, f"({ref})::text", partial(_decimal, arrow_type), as_text=True)
    return Plan(column, ref, _DECODERS[kind](arrow_type), width=_wire_width(kind, arrow_type))


def _wire_width(kind: str, arrow_type: pa.DataType) -> int | None:
    """The binary COPY width of every value of a fixed-width kind (None: variable)."""
    if kind == "fixed":
        return np.dtype(_FIXED_WIRE[arrow_type]).itemsize
    return _WIRE_WIDTHS.get(kind)


def _is_decimal(arrow_type: pa.DataType) -> bool:
    return bool(pa.types.is_decimal(arrow_type))


def _array_plan(column: Column, element: Column, ref: str) -> Plan:
    """A one-dimensional array as a list of its elements, each decoded by the element
    type's own plan (so a list<T> is typed exactly as a T column would be)."""
    inner = plan(element, "e")
    expr = f"({ref})::text[]" if inner.as_text else ref

    def decode(values: Values) -> pa.Array:
        try:
            counts, elements = array_elements(values)
        except ValueError as e:
            raise UnsupportedColumnType(
                f"column {column.name!r} holds a {e}; only one-dimensional arrays map to a list"
            ) from e
        offsets = np.zeros(len(counts) + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets[1:])
        return pa.Array.from_buffers(
            column.arrow_type,
            len(counts),
            [validity(values), pa.py_buffer(offsets)],
            children=[inner.decode(elements)],
        )

    return Plan(column, expr, decode)


def _fixed(arrow_type: pa.DataType) -> Decode:
    return partial(fixed, arrow_type=arrow_type, dtype=_FIXED_WIRE[arrow_type])


def _oid(arrow_type: pa.DataType) -> Decode:
    """An oid (unsigned 32-bit on the wire) widened to int64, which every engine reads."""

    def decode(values: Values) -> pa.Array:
        fixed(values, pa.uint32(), ">u4")  # checks every value is 4 bytes
        return from_numpy(pa.int64(), values.big_endian(">u4").astype(np.int64), validity(values))

    return decode


def _bool(arrow_type: pa.DataType) -> Decode:
    def decode(values: Values) -> pa.Array:
        return from_numpy(arrow_type, values.big_endian(">u1") != 0, validity(values))

    return decode


def _text(arrow_type: pa.DataType) -> Decode:
    return partial(variable, arrow_type=pa.string())


def _json(arrow_type: pa.DataType) -> Decode:
    if pa.types.is_string(arrow_type):  # the portable profile: the text itself
        return partial(variable, arrow_type=pa.string())

    def decode(values: Values) -> pa.Array:
        return pa.ExtensionArray.from_storage(pa.json_(), variable(values, pa.string()))

    return decode


def _decimal(arrow_type: pa.DataType, values: Values) -> pa.Array:
    import pyarrow.compute as pc  # here: 50 ms of import that most tables never need

    return pc.cast(variable(values, pa.string()), arrow_type)


def _small_decimal(arrow_type: pa.DataType, values: Values) -> pa.Array:
    """numeric(p <= 18, s) from its binary form: base-10000 digits summed into the
    unscaled int64 (exact: every value of the column has at most p digits, s after the
    point), then widened to Arrow's 128-bit decimal. NaN and infinities are refused."""
    valid = ~values.nulls
    values = gathered(values)  # then the header and each digit are strided views
    # The header, in one gather: digit count, weight, sign and display scale (16 bits each).
    header = values.big_endian(">u8")
    digits = np.where(valid, header >> 48, 0).astype(np.int64)
    weight = ((header >> 32) & 0xFFFF).astype(np.uint16).view(np.int16).astype(np.int64)
    sign = (header >> 16) & 0xFFFF
    _refuse(valid & (sign == _NUMERIC_NAN), "NaN")
    _refuse(valid & ((sign == _NUMERIC_PINF) | (sign == _NUMERIC_NINF)), "an infinity")
    most = int(digits.max(initial=0))
    if most <= _HORNER_DIGITS:
        unscaled = _unscaled_horner(values, digits, weight, most, arrow_type.scale)
    else:
        unscaled = _unscaled_by_digit(values, digits, weight, most, arrow_type.scale)
    unscaled = np.where(sign == _NUMERIC_NEG, -unscaled, unscaled)
    halves = np.empty((len(values), 2), dtype=np.int64)  # little-endian 128-bit
    halves[:, 0], halves[:, 1] = unscaled, unscaled >> 63
    return pa.Array.from_buffers(arrow_type, len(values), [validity(values), pa.py_buffer(halves)])


def _unscaled_horner(
    values: Values, digits: Int64s, weight: Int64s, most: int, scale: int
) -> Int64s:
    """The unscaled values of numerics of at most 4 base-10000 digits (16 decimal digits:
    no int64 overflow): the digits read as one integer, then scaled by a power of ten
    once a value (the rows' digits are aligned at their last)."""
    whole = np.zeros(len(values), dtype=np.int64)
    for k in range(most):
        has = digits > k
        digit = values.big_endian(">i2", 8 + 2 * k).astype(np.int64)
        whole = np.where(has, whole * 10_000 + digit, whole)
    exponent = 4 * (weight - digits + 1) + scale  # of ten, for the last digit
    up = _POW10[np.clip(exponent, 0, _INT64_DIGITS)]
    down = _POW10[np.clip(-exponent, 0, _INT64_DIGITS)]
    quotient, remainder = np.divmod(whole, down)
    if np.any(remainder):
        raise ValueError(f"more fractional digits than the scale {scale}")
    result: Int64s = quotient * up
    return result


def _unscaled_by_digit(
    values: Values, digits: Int64s, weight: Int64s, most: int, scale: int
) -> Int64s:
    """The unscaled values, digit by digit (any number of digits, no overflow on the way)."""
    unscaled = np.zeros(len(values), dtype=np.int64)
    for k in range(most):
        has = digits > k
        digit = np.where(has, values.big_endian(">i2", 8 + 2 * k), 0).astype(np.int64)
        exponent = 4 * (weight - k) + scale  # of ten, for this digit
        up = _POW10[np.clip(exponent, 0, _INT64_DIGITS)]
        down = _POW10[np.clip(-exponent, 0, _INT64_DIGITS)]
        if np.any(digit % down):
            raise ValueError(f"more fractional digits than the scale {scale}")
        unscaled += digit * up // down
    return unscaled


def _date(arrow_type: pa.DataType) -> Decode:
    def decode(values: Values) -> pa.Array:
        days = values.big_endian(">i4").astype(np.int64)
        valid = ~values.nulls
        _refuse(valid & ((days == _INT32.max) | (days == _INT32.min)), "an infinite date")
        days += _EPOCH_DAYS
        _refuse(valid & (days < _FIRST_DAY), "a date before year 1 (BC)")
        return from_numpy(arrow_type, days.astype(np.int32), validity(values))

    return decode


def _time(arrow_type: pa.DataType) -> Decode:
    if pa.types.is_string(arrow_type):
        return _time_text

    def decode(values: Values) -> pa.Array:
        micros = values.big_endian(">i8")
        _refuse(~values.nulls & (micros >= _DAY_MICROS), "the time 24:00:00")
        return from_numpy(arrow_type, micros, validity(values))

    return decode


def _timestamp(arrow_type: pa.DataType) -> Decode:
    """PostgreSQL's microseconds since 2000 as Arrow's since 1970: years 10000 and on
    too, exactly, up to Arrow's limit (year 294247; PostgreSQL's is 294276)."""

    def decode(values: Values) -> pa.Array:
        micros = values.big_endian(">i8")
        nulls = values.nulls
        valid = micros[~nulls] if nulls.any() else micros
        if len(valid) and (valid.min() < _FIRST_MICROS or valid.max() > _LAST_MICROS):
            _refuse((valid == _INT64.max) | (valid == _INT64.min), "an infinity")
            _refuse(valid > _LAST_MICROS, "a timestamp past year 294247")
            _refuse(valid < _FIRST_MICROS, "a timestamp before year 1 (BC)")
        micros += _EPOCH_MICROS  # NULLs' values mean nothing: wrapping is harmless
        return from_numpy(arrow_type, micros, validity(values))

    return decode


def _interval(arrow_type: pa.DataType) -> Decode:
    """PostgreSQL's own three fields: microseconds (int64), days, months (int32)."""

    def decode(values: Values) -> pa.Array:
        fields = [
            from_numpy(pa.int32(), values.big_endian(">i4", 12), None),
            from_numpy(pa.int32(), values.big_endian(">i4", 8), None),
            from_numpy(pa.int64(), values.big_endian(">i8"), None),
        ]
        return pa.Array.from_buffers(INTERVAL, len(values), [validity(values)], children=fields)

    return decode


def _uuid(arrow_type: pa.DataType) -> Decode:
    if pa.types.is_string(arrow_type):
        return _uuid_text

    def decode(values: Values) -> pa.Array:
        start = np.where(values.nulls, 0, values.positions)
        raw = values.data[start[:, None] + np.arange(16)].tobytes() if len(values) else b""
        storage = pa.Array.from_buffers(
            pa.binary(16), len(values), [validity(values), pa.py_buffer(raw)]
        )
        return pa.ExtensionArray.from_storage(pa.uuid(), storage)

    return decode


# --- fixed-width text built with numpy: one (values x width) byte matrix, no Python per
# value. Rows of NULLs hold whatever their (meaningless) bytes gave; the bitmap hides them.

_ASCII_0 = ord("0")
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_HEX_AT = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def _fixed_text(chars: npt.NDArray[np.uint8], values: Values) -> pa.Array:
    """The rows of ``chars`` (ASCII) as a string array with ``values``' NULLs."""
    count, width = chars.shape
    offsets = np.arange(0, (count + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(),
        count,
        [validity(values), pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars))],
    )


def _digits(numbers: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.uint8]:
    """Each of ``numbers`` (0 <= n < 10**width) as ``width`` zero-padded ASCII digits."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((numbers[:, None] // powers) % 10 + _ASCII_0).astype(np.uint8)


def _clock_chars(micros: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """``HH:MM:SS.ffffff`` of microseconds since midnight (24:00:00 included)."""
    seconds, fraction = np.divmod(micros, 1_000_000)
    minutes, second = np.divmod(seconds, 60)
    hour, minute = np.divmod(minutes, 60)
    colon, dot = (
        np.full((len(micros), 1), ord(":"), np.uint8),
        np.full((len(micros), 1), ord("."), np.uint8),
    )
    parts = [_digits(hour, 2), colon, _digits(minute, 2), colon, _digits(second, 2), dot]
    return np.hstack([*parts, _digits(fraction, 6)])


def _time_micros(values: Values) -> npt.NDArray[np.int64]:
    micros = np.where(values.nulls, 0, values.big_endian(">i8"))
    _refuse((micros < 0) | (micros > _DAY_MICROS), "a time outside 00:00:00-24:00:00")
    return micros


def _time_text(values: Values) -> pa.Array:
    """time as fixed-width ``HH:MM:SS.ffffff`` (PostgreSQL's 24:00:00 kept)."""
    return _fixed_text(_clock_chars(_time_micros(values)), values)


def _timetz_text(arrow_type: pa.DataType) -> Decode:
    """timetz as ``HH:MM:SS.ffffff+HH:MM``: its time and its own UTC offset (the wire
    holds seconds *west* of UTC). An offset with seconds (a pre-1900 local mean time)
    is refused rather than rounded."""

    def decode(values: Values) -> pa.Array:
        micros = _time_micros(values)
        east = -np.where(values.nulls, 0, values.big_endian(">i4", 8)).astype(np.int64)
        _refuse(east % 60 != 0, "a UTC offset with seconds")
        minutes = np.abs(east) // 60
        sign = np.where(east < 0, ord("-"), ord("+")).astype(np.uint8)[:, None]
        colon = np.full((len(values), 1), ord(":"), np.uint8)
        offset = [sign, _digits(minutes // 60, 2), colon, _digits(minutes % 60, 2)]
        return _fixed_text(np.hstack([_clock_chars(micros), *offset]), values)

    return decode


def _uuid_text(values: Values) -> pa.Array:
    """uuid as its canonical text: 32 lower-case hex digits, dashes after 8, 12, 16, 20."""
    start = np.where(values.nulls, 0, values.positions)
    raw = values.data[start[:, None] + np.arange(16)]
    hexes = np.empty((len(values), 32), dtype=np.uint8)
    hexes[:, 0::2], hexes[:, 1::2] = _HEX[raw >> 4], _HEX[raw & 15]
    chars = np.full((len(values), 36), ord("-"), dtype=np.uint8)
    chars[:, _UUID_HEX_AT] = hexes
    return _fixed_text(chars, values)


def _bytea(arrow_type: pa.DataType) -> Decode:
    return partial(variable, arrow_type=pa.binary())


def _refuse(bad: npt.NDArray[np.bool_], what: str) -> None:
    if bad.any():
        raise ValueError(what)


_DECODERS: dict[str, Callable[[pa.DataType], Decode]] = {
    "fixed": _fixed,
    "oid": _oid,
    "bool": _bool,
    "text": _text,
    "json": _json,
    "date": _date,
    "time": _time,
    "timestamp": _timestamp,
    "interval": _interval,
    "uuid": _uuid,
    "timetz": _timetz_text,
    "bytea": _bytea,
}
_TEXT_DECODERS: dict[str, Callable[[pa.DataType], Decode]] = {
    "text_cast": _text,
    "numeric": _text,
    "jsonb": _json,
}


# --- pg8000's Python values, conformed to the same mapping (the small-result path) ---

Convert = Callable[[Any], Any]


def conform(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> list[dict[str, Any]]:
    """``rows`` with each pg8000 value in the form the catalog schema's type takes."""
    converters = {
        field.name: convert
        for field in schema
        if (convert := _converter(field.type, _pg_type(field))) is not None
    }
    if not converters:
        return [dict(row) for row in rows]
    conformed = []
    for row in rows:
        out = dict(row)
        for name, convert in converters.items():
            value = out.get(name)
            if value is not None:
                try:
                    out[name] = convert(value)
                except (ValueError, ArithmeticError) as e:
                    raise UnsupportedColumnType(
                        f"column {name!r} holds a value with no faithful Arrow form: {e}"
                    ) from e
        conformed.append(out)
    return conformed


def _pg_type(field: pa.Field) -> str:
    metadata: dict[bytes, bytes] = field.metadata or {}
    return metadata.get(PG_TYPE_KEY, b"").decode()


def _converter(arrow_type: pa.DataType, pg_type: str) -> Convert | None:
    """How a pg8000 value of ``pg_type`` becomes a value of ``arrow_type`` (None: as is)."""
    base = pg_type.removesuffix("[]")
    if pa.types.is_list(arrow_type):
        element = _converter(arrow_type.value_type, base)
        if element is None:
            return None
        return lambda values: [None if v is None else element(v) for v in values]
    if arrow_type == pa.json_():
        return _json_text
    if arrow_type == INTERVAL:
        return _interval_fields
    if pa.types.is_string(arrow_type):
        if base in ("json", "jsonb"):
            return _json_text
        if base == "uuid":
            return str  # uuid.UUID's str is the canonical lower-case text
        if base.startswith("time") and "with time zone" in base:
            return _timetz_text_of
        if base.startswith("time"):
            return _time_text_of
        return _numeric_text
    if pa.types.is_decimal(arrow_type):
        return _finite_decimal
    return None


def _time_text_of(value: Any) -> str:
    """A pg8000 ``time`` as the fixed-width text the binary path writes."""
    return f"{value.hour:02}:{value.minute:02}:{value.second:02}.{value.microsecond:06}"


def _timetz_text_of(value: Any) -> str:
    """pg8000 returns timetz as PostgreSQL's text (``09:30:00.5+05:30``): normalised to
    the fixed width the binary path writes."""
    if isinstance(value, str):
        at = max(value.rfind("+"), value.rfind("-"))
        clock, zone = value[:at], value[at:]
        whole, _, fraction = clock.partition(".")
        parts = zone[1:].split(":")
        if len(parts) > 2 and int(parts[2]):
            raise ValueError("a UTC offset with seconds")
        zone_minutes = parts[1] if len(parts) > 1 else "00"
        return f"{whole}.{fraction.ljust(6, '0')}{zone[0]}{int(parts[0]):02}:{zone_minutes}"
    offset = value.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(minutes), 60)
    return f"{_time_text_of(value)}{sign}{hours:02}:{rest:02}"


def _numeric_text(value: Any) -> Any:
    """A numeric as PostgreSQL's text (positional, trailing zeros kept, NaN, Infinity)."""
    return format(value, "f") if isinstance(value, Decimal) else value


def _finite_decimal(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise ValueError(f"{value} does not fit a decimal type")
    return value


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _interval_fields(value: Any) -> dict[str, int]:
    """pg8000's timedelta (normalised: 1 day 25:00 arrives as 2 days 01:00) or PGInterval."""
    if isinstance(value, timedelta):
        return {
            "months": 0,
            "days": value.days,
            "microseconds": value.seconds * 1_000_000 + value.microseconds,
        }
    years = (
        (value.millennia or 0) * 1000
        + (value.centuries or 0) * 100
        + (value.decades or 0) * 10
        + (value.years or 0)
    )
    hours, minutes = value.hours or 0, value.minutes or 0
    seconds, micros = value.seconds or 0, value.microseconds or 0
    return {
        "months": years * 12 + (value.months or 0),
        "days": (value.weeks or 0) * 7 + (value.days or 0),
        "microseconds": round(((hours * 60 + minutes) * 60 + seconds) * 1_000_000) + micros,
    }


# --- the Glue/Hive type each Arrow type is declared as (the catalog, Athena) ---


def glue_type(arrow_type: pa.DataType) -> str:
    """The Hive DDL type Glue declares a column of ``arrow_type`` as (Athena reads the
    Parquet column as it). Raises UnsupportedColumnType for a type Athena cannot declare
    (the extension profile's time64, decimal256): use the portable profile with Athena."""
    if pa.types.is_list(arrow_type):
        return f"array<{glue_type(arrow_type.value_type)}>"
    if pa.types.is_struct(arrow_type):
        fields = ",".join(f"{f.name}:{glue_type(f.type)}" for f in arrow_type)
        return f"struct<{fields}>"
    if isinstance(arrow_type, pa.ExtensionType):
        return glue_type(arrow_type.storage_type)
    if pa.types.is_decimal128(arrow_type):
        return f"decimal({arrow_type.precision},{arrow_type.scale})"
    if pa.types.is_timestamp(arrow_type):
        return "timestamp"
    for name, check in _GLUE_TYPES:
        if check(arrow_type):
            return name
    raise UnsupportedColumnType(f"type {arrow_type} cannot be declared in Glue/Athena")


_GLUE_TYPES: tuple[tuple[str, Callable[[pa.DataType], bool]], ...] = (
    ("smallint", pa.types.is_int16),
    ("int", pa.types.is_int32),
    ("bigint", pa.types.is_int64),
    ("float", pa.types.is_float32),
    ("double", pa.types.is_float64),
    ("boolean", pa.types.is_boolean),
    ("string", pa.types.is_string),
    ("binary", lambda t: pa.types.is_binary(t) or pa.types.is_fixed_size_binary(t)),
    ("date", pa.types.is_date32),
)
