"""A table's columns, read from the PostgreSQL catalog and mapped by ``pg_types``.

Reads ``pg_attribute`` and ``pg_type`` (through the session's connection, so inside the
extract's snapshot when called there); every decision about a type is ``pg_types``'.
"""

from __future__ import annotations

from typing import Any

import pg8000.native
import pyarrow as pa

from totes_ingest.db_errors import source_errors
from totes_ingest.errors import SourceError, UnsupportedColumnType
from totes_ingest.identifiers import quote_ident
from totes_ingest.pg_types import CatalogType, Column, Profile, map_type, schema_of

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


def table_schema(
    conn: pg8000.native.Connection, table: str, profile: Profile = "portable"
) -> pa.Schema:
    """The Arrow schema of ``table``, from the catalog.

    Raises SourceError if the table does not exist, UnsupportedColumnType if a column's
    type has no faithful Arrow mapping.
    """
    return schema_of(table_columns(conn, table, profile=profile))


def table_columns(
    conn: pg8000.native.Connection,
    table: str,
    *,
    window: str | None = None,
    relation: str | None = None,
    profile: Profile = "portable",
) -> list[Column]:
    """``table``'s columns in order, each with its Arrow type (see ``pg_types``).

    ``relation`` is its schema-qualified name (default: ``table`` on the search path);
    ``window`` only labels the errors; ``profile`` picks the type mapping.
    """
    with source_errors("catalog read", table=table, window=window):
        ((rel,),) = conn.run(_TABLE_OID, name=relation or quote_ident(table))
        if rel is None:
            raise SourceError("table does not exist", table=table, window=window)
        rows = conn.run(_COLUMNS, rel=rel)
        types = _TypeCache(conn)
        try:
            return [
                map_type(name, pg_type, oid, typmod, types.lookup, profile)
                for name, pg_type, typmod, oid in rows
            ]
        except UnsupportedColumnType as e:
            raise UnsupportedColumnType(str(e), table=table, window=window) from e


class _TypeCache:
    """``pg_type`` rows by oid, each read once per table."""

    def __init__(self, conn: pg8000.native.Connection) -> None:
        self._conn = conn
        self._types: dict[int, CatalogType] = {}

    def lookup(self, oid: int) -> CatalogType:
        if oid not in self._types:
            ((name, namespace, typtype, category, element, base, base_typmod),) = self._conn.run(
                _TYPE, oid=oid
            )
            self._types[oid] = CatalogType(
                name, namespace, _char(typtype), _char(category), element, base, base_typmod
            )
        return self._types[oid]


def _char(value: Any) -> str:
    """pg8000 returns the internal ``"char"`` type as str or bytes depending on version."""
    return value.decode() if isinstance(value, bytes) else str(value)
