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

The mapping (domains are mapped as their base type):

=====================================  =============================================
PostgreSQL                             Arrow
=====================================  =============================================
smallint / integer / bigint            int16 / int32 / int64
oid                                    uint32
numeric(p, s)                          decimal128(p, s) for p <= 38, decimal256 up to
                                       76 (negative scale s: decimal(p - s, 0); scale
                                       above precision: decimal(s, s))
numeric (unconstrained, or p > 76)     string holding PostgreSQL's exact text, e.g.
                                       ``"1.50"``, ``"NaN"``, ``"Infinity"``: no float,
                                       no rounding, trailing zeros kept
real / double precision                float32 / float64 (NaN and +-Infinity kept)
boolean                                bool
text, varchar, char(n), name, "char"   string (char(n) keeps its padding)
inet, cidr, macaddr, macaddr8, xml     string (PostgreSQL's text form)
enum types                             string (the label)
date                                   date32
time                                   time64[us]
timestamp                              timestamp[us]
timestamptz                            timestamp[us, tz=UTC]
interval                               struct<months: int32, days: int32,
                                       microseconds: int64>: PostgreSQL's own three
                                       fields, exact (Parquet cannot store Arrow's
                                       month_day_nano interval)
uuid                                   arrow.uuid (fixed_size_binary(16); Parquet UUID)
json / jsonb                           arrow.json (string; Parquet JSON): the server's
                                       text of the value
bytea                                  binary
T[] (one dimension)                    list<element: T> (lower bounds are not kept)
=====================================  =============================================

Anything else (timetz, money, geometric, range, composite, bit strings...) raises
UnsupportedColumnType naming the table and the column: no silent lossy fallback.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from functools import partial
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from totes_ingest.errors import UnsupportedColumnType

PG_TYPE_KEY = b"pg_type"
INTERVAL = pa.struct(
    [
        pa.field("months", pa.int32()),
        pa.field("days", pa.int32()),
        pa.field("microseconds", pa.int64()),
    ]
)
LIST_ITEM_NAME = "element"  # the name Parquet's compliant LIST layout reads back

# How a column travels through COPY CSV: "plain" columns parse straight into their Arrow
# type; the others need a finishing step (see ``plan``).
Kind = Literal["plain", "json", "uuid", "bytea", "interval", "array"]

# How the COPY's CSV text reads (NULL is an unquoted empty field, '' is ""), for the
# table's rows and for array elements alike.
CSV_CONVERT: dict[str, Any] = {
    "null_values": [""],
    "strings_can_be_null": True,
    "quoted_strings_can_be_null": False,
    "true_values": ["t", "true"],
    "false_values": ["f", "false"],
}

_SIMPLE: dict[str, tuple[pa.DataType, Kind]] = {
    "int2": (pa.int16(), "plain"),
    "int4": (pa.int32(), "plain"),
    "int8": (pa.int64(), "plain"),
    "oid": (pa.uint32(), "plain"),
    "float4": (pa.float32(), "plain"),
    "float8": (pa.float64(), "plain"),
    "bool": (pa.bool_(), "plain"),
    "text": (pa.string(), "plain"),
    "varchar": (pa.string(), "plain"),
    "bpchar": (pa.string(), "plain"),
    "name": (pa.string(), "plain"),
    "char": (pa.string(), "plain"),
    "inet": (pa.string(), "plain"),
    "cidr": (pa.string(), "plain"),
    "macaddr": (pa.string(), "plain"),
    "macaddr8": (pa.string(), "plain"),
    "xml": (pa.string(), "plain"),
    "date": (pa.date32(), "plain"),
    "time": (pa.time64("us"), "plain"),
    "timestamp": (pa.timestamp("us"), "plain"),
    "timestamptz": (pa.timestamp("us", tz="UTC"), "plain"),
    "interval": (INTERVAL, "interval"),
    "uuid": (pa.uuid(), "uuid"),
    "json": (pa.json_(), "json"),
    "jsonb": (pa.json_(), "json"),
    "bytea": (pa.binary(), "bytea"),
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
    name: str, pg_type: str, oid: int, typmod: int, lookup: Callable[[int], CatalogType]
) -> Column:
    """The column ``name`` of type ``oid`` (``pg_type`` is its ``format_type``).

    ``lookup`` gives the catalog facts of a type oid. Raises UnsupportedColumnType (for
    the caller to label with the table) if the type has no faithful Arrow mapping.
    """

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
            return pa.string(), "plain", None
        if typ.category == "A" and typ.element_oid != 0:
            if in_array:
                raise unsupported()
            arrow, kind, _ = resolve(typ.element_oid, typmod, True)
            element = Column(LIST_ITEM_NAME, pg_type, arrow, kind)
            return pa.list_(pa.field(LIST_ITEM_NAME, arrow)), "array", element
        if typ.typtype != "b" or typ.namespace != "pg_catalog":
            raise unsupported()
        if typ.name == "numeric":
            return numeric_type(typmod), "plain", None
        try:
            arrow, kind = _SIMPLE[typ.name]
        except KeyError:
            raise unsupported() from None
        return arrow, kind, None

    arrow, kind, element = resolve(oid, typmod, False)
    return Column(name, pg_type, arrow, kind, element)


def numeric_type(typmod: int) -> pa.DataType:
    """decimal128/decimal256 for ``numeric(p, s)``; string (exact text) otherwise."""
    if typmod < 4:  # -1: unconstrained
        return pa.string()
    precision = ((typmod - 4) >> 16) & 0xFFFF
    scale = (((typmod - 4) & 0x7FF) ^ 1024) - 1024  # an 11-bit signed field (PG 15+)
    if scale < 0:
        precision, scale = precision - scale, 0
    precision = max(precision, scale)
    if precision <= 38:
        return pa.decimal128(precision, scale)
    if precision <= 76:
        return pa.decimal256(precision, scale)
    return pa.string()


# --- the extract's plan of a column: its SELECT expressions, CSV types, finishing step ---

Finish = Callable[[Sequence[pa.Array]], pa.Array]


@dataclass(frozen=True)
class Plan:
    column: Column
    exprs: tuple[str, ...]
    csv_types: tuple[pa.DataType, ...]
    finish: Finish | None  # None: the CSV column is already the final array


def plan(column: Column, ref: str) -> Plan:
    """How ``column`` (the SQL expression ``ref``) is selected, parsed and finished.

    The extract selects ``exprs`` (one CSV column each), parses them as ``csv_types``
    and hands the parsed arrays to ``finish``, which returns the column's final array.
    """
    kind = column.kind
    if kind == "plain" and pa.types.is_decimal256(column.arrow_type):
        # pyarrow's CSV reader stops at decimal128; its cast refuses any rounding.
        return Plan(column, (ref,), (pa.string(),), partial(_finish_cast, column.arrow_type))
    if kind == "plain":
        return Plan(column, (ref,), (column.arrow_type,), None)
    if kind == "json":
        return Plan(column, (ref,), (pa.string(),), _finish_json)
    if kind == "uuid":
        return Plan(column, (ref,), (pa.string(),), _finish_uuid)
    if kind == "bytea":
        return Plan(column, (ref,), (pa.string(),), _finish_bytea)
    if kind == "interval":
        # Exact: extract() of an interval field is numeric (PostgreSQL 14+).
        exprs = (
            f"(extract(year FROM {ref}) * 12 + extract(month FROM {ref}))::int4",
            f"extract(day FROM {ref})::int4",
            f"(extract(hour FROM {ref}) * 3600000000 + extract(minute FROM {ref}) * 60000000"
            f" + extract(microseconds FROM {ref}))::int8",
        )
        return Plan(column, exprs, (pa.int32(), pa.int32(), pa.int64()), _finish_interval)
    assert column.element is not None
    return _array_plan(column, column.element, ref)


def _array_plan(column: Column, element: Column, ref: str) -> Plan:
    """An array as (cardinality, CSV block of its elements, one line each, in order).

    The elements are parsed by their own plan, so a list<T> is typed exactly as a T
    column would be. A multi-dimensional value gets cardinality -1 and is refused.
    """
    inner = plan(element, "_totes_u._totes_e")
    fields = " || ',' || ".join(
        f"CASE WHEN ({e}) IS NULL THEN '' ELSE '\"' || replace(({e})::text, '\"', '\"\"')"
        " || '\"' END"
        for e in inner.exprs
    )
    cardinality = f"CASE WHEN array_ndims({ref}) > 1 THEN -1 ELSE cardinality({ref}) END"
    block = (
        f"(SELECT string_agg({fields}, E'\\n' ORDER BY _totes_u._totes_n) || E'\\n'"  # nosec B608
        f" FROM unnest({ref}) WITH ORDINALITY AS _totes_u(_totes_e, _totes_n))"
    )

    def finish(arrays: Sequence[pa.Array]) -> pa.Array:
        counts, blocks = arrays
        if pc.any(pc.equal(counts, -1)).as_py():
            raise UnsupportedColumnType(
                f"column {column.name!r} holds a multi-dimensional array; only one-"
                "dimensional arrays map to a list"
            )
        lengths = pc.fill_null(counts, 0)
        offsets = pa.concat_arrays(
            [pa.array([0], pa.int32()), pc.cumulative_sum(lengths).cast(pa.int32())]
        )
        _, payload = _string_payload(pc.fill_null(blocks, ""))
        values = _parse_elements(inner, payload, offsets[-1].as_py())
        return pa.ListArray.from_arrays(
            offsets, values, type=column.arrow_type, mask=pc.is_null(counts)
        )

    return Plan(column, (cardinality, block), (pa.int32(), pa.string()), finish)


def _parse_elements(inner: Plan, payload: bytes, expected: int) -> pa.Array:
    if expected == 0:
        return pa.array([], type=inner.column.arrow_type)
    names = [f"c{i}" for i in range(len(inner.exprs))]
    table = pacsv.read_csv(
        io.BytesIO(payload),
        read_options=pacsv.ReadOptions(column_names=names, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(
            column_types=dict(zip(names, inner.csv_types, strict=True)), **CSV_CONVERT
        ),
    )
    if table.num_rows != expected:
        raise ValueError(f"array elements: parsed {table.num_rows}, expected {expected}")
    arrays = [table.column(i).combine_chunks() for i in range(table.num_columns)]
    return arrays[0] if inner.finish is None else inner.finish(arrays)


def _finish_cast(arrow_type: pa.DataType, arrays: Sequence[pa.Array]) -> pa.Array:
    return pc.cast(arrays[0], arrow_type)


def _finish_json(arrays: Sequence[pa.Array]) -> pa.Array:
    return pa.ExtensionArray.from_storage(pa.json_(), arrays[0])


def _finish_uuid(arrays: Sequence[pa.Array]) -> pa.Array:
    text = arrays[0]
    hex_digits = pc.replace_substring(pc.fill_null(text, "0" * 32), "-", "")
    _, payload = _string_payload(hex_digits)
    raw = bytes.fromhex(payload.decode("ascii"))
    storage = pa.Array.from_buffers(pa.binary(16), len(text), [None, pa.py_buffer(raw)])
    return pa.ExtensionArray.from_storage(pa.uuid(), _with_nulls_of(text, storage))


def _finish_bytea(arrays: Sequence[pa.Array]) -> pa.Array:
    """``\\x0a0b`` (bytea_output = hex) to binary, decoding the whole batch at once."""
    text = arrays[0]
    digits = pc.utf8_slice_codeunits(pc.fill_null(text, "\\x"), 2)
    offsets, payload = _string_payload(digits)
    raw = bytes.fromhex(payload.decode("ascii"))
    half = pc.divide(offsets, pa.scalar(2, pa.int32()))  # two hex digits a byte
    built = pa.Array.from_buffers(
        pa.binary(), len(text), [None, half.buffers()[1], pa.py_buffer(raw)]
    )
    return _with_nulls_of(text, built)


def _finish_interval(arrays: Sequence[pa.Array]) -> pa.Array:
    return pa.StructArray.from_arrays(
        list(arrays), fields=list(INTERVAL), mask=pc.is_null(arrays[0])
    )


def _string_payload(text: pa.Array) -> tuple[pa.Array, bytes]:
    """A string array's offsets (int32, from 0) and its values' bytes, concatenated."""
    if len(text) == 0:
        return pa.array([0], pa.int32()), b""
    _, offsets_buffer, data = text.buffers()
    offsets = pa.Array.from_buffers(
        pa.int32(), len(text) + 1, [None, offsets_buffer], offset=text.offset
    )
    start, end = offsets[0].as_py(), offsets[-1].as_py()
    payload = data[start:end].to_pybytes() if data is not None else b""
    return pc.subtract(offsets, pa.scalar(start, pa.int32())), payload


def _with_nulls_of(source: pa.Array, built: pa.Array) -> pa.Array:
    if source.null_count == 0:
        return built
    return pc.if_else(pc.is_valid(source), built, pa.nulls(len(built), built.type))


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
        return _interval
    if pa.types.is_string(arrow_type):
        return _text
    if pa.types.is_decimal(arrow_type):
        return _finite_decimal
    return None


def _text(value: Any) -> Any:
    """A numeric as PostgreSQL's text (positional, trailing zeros kept, NaN, Infinity)."""
    return format(value, "f") if isinstance(value, Decimal) else value


def _finite_decimal(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise ValueError(f"{value} does not fit a decimal type")
    return value


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _interval(value: Any) -> dict[str, int]:
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
