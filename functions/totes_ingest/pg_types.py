"""PostgreSQL column types to Arrow types, read from the catalog.

A table's Arrow (and so Parquet) schema comes from ``pg_attribute``/``pg_type``, never
from the rows of a run: every file of a table has the same schema, an all-NULL column
keeps its type and an empty window is still a well-typed, zero-row file. Each field
carries its PostgreSQL type (``format_type``) in its metadata under ``b"pg_type"``.

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

from dataclasses import dataclass
from typing import Any, Literal

import pg8000.native
import pyarrow as pa

from totes_ingest.db_errors import source_errors
from totes_ingest.errors import SourceError, UnsupportedColumnType
from totes_ingest.identifiers import quote_ident

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
# type; the others need a finishing step (see extract).
Kind = Literal["plain", "json", "uuid", "bytea", "interval", "array"]

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

_TABLE_OID = "SELECT to_regclass(:name)::oid"
_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypmod, a.atttypid
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = :rel AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_TYPE = """
SELECT t.typname, n.nspname, t.typtype, t.typcategory, t.typelem, t.typbasetype, t.typtypmod
FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
WHERE t.oid = :oid
"""


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
class _PgType:
    name: str
    namespace: str
    typtype: str
    category: str
    element_oid: int
    base_oid: int
    base_typmod: int


def table_schema(conn: pg8000.native.Connection, table: str) -> pa.Schema:
    """The Arrow schema of ``table``, from the catalog.

    Raises SourceError if the table does not exist, UnsupportedColumnType if a column's
    type has no faithful Arrow mapping.
    """
    return schema_of(table_columns(conn, table))


def schema_of(columns: list[Column]) -> pa.Schema:
    return pa.schema([column.field for column in columns])


def table_columns(
    conn: pg8000.native.Connection,
    table: str,
    *,
    window: str | None = None,
    relation: str | None = None,
) -> list[Column]:
    """``table``'s columns in order, each with its Arrow type (see the module docstring).

    ``relation`` is its schema-qualified name (default: ``table`` on the search path);
    ``window`` only labels the errors.
    """
    with source_errors("catalog read", table=table, window=window):
        ((rel,),) = conn.run(_TABLE_OID, name=relation or quote_ident(table))
        if rel is None:
            raise SourceError("table does not exist", table=table, window=window)
        rows = conn.run(_COLUMNS, rel=rel)
        types: dict[int, _PgType] = {}
        return [
            _column(conn, types, table, window, name, pg_type, typmod, oid)
            for name, pg_type, typmod, oid in rows
        ]


def _column(
    conn: pg8000.native.Connection,
    types: dict[int, _PgType],
    table: str,
    window: str | None,
    name: str,
    pg_type: str,
    typmod: int,
    oid: int,
) -> Column:
    def unsupported(what: str) -> UnsupportedColumnType:
        return UnsupportedColumnType(
            f"column {name!r} has type {what}, which has no faithful Arrow mapping",
            table=table,
            window=window,
        )

    def resolve(oid: int, typmod: int, in_array: bool) -> tuple[pa.DataType, Kind, Column | None]:
        typ = _type(conn, types, oid)
        while typ.typtype == "d":  # a domain: its base type, with the domain's typmod
            typmod = typ.base_typmod
            typ = _type(conn, types, typ.base_oid)
        if typ.typtype == "e":
            return pa.string(), "plain", None
        if typ.category == "A" and typ.element_oid != 0:
            if in_array:
                raise unsupported(pg_type)
            arrow, kind, _ = resolve(typ.element_oid, typmod, True)
            element = Column(LIST_ITEM_NAME, pg_type, arrow, kind)
            return pa.list_(pa.field(LIST_ITEM_NAME, arrow)), "array", element
        if typ.typtype != "b" or typ.namespace != "pg_catalog":
            raise unsupported(pg_type)
        if typ.name == "numeric":
            return numeric_type(typmod), "plain", None
        try:
            arrow, kind = _SIMPLE[typ.name]
        except KeyError:
            raise unsupported(pg_type) from None
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


def _type(conn: pg8000.native.Connection, types: dict[int, _PgType], oid: int) -> _PgType:
    if oid not in types:
        ((name, namespace, typtype, category, element, base, base_typmod),) = conn.run(
            _TYPE, oid=oid
        )
        types[oid] = _PgType(
            name, namespace, _char(typtype), _char(category), element, base, base_typmod
        )
    return types[oid]


def _char(value: Any) -> str:
    """pg8000 returns the internal ``"char"`` type as str or bytes depending on version."""
    return value.decode() if isinstance(value, bytes) else str(value)
