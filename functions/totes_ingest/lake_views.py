"""The SQL people query the lake with: one generator for Athena and for DuckDB.

Every table has two relations over its files plus its tombstones:

- ``<table>``: the raw table, every row version the lake holds (the pipeline's files and
  the audit's repaired versions alike: ordinary Parquet files in the table's folders);
- ``<table>_tombstones``: the keys the audit saw deleted (``_tombstones/<table>/...``):
  the key column(s), ``deleted_at`` and ``last_version`` (the newest cursor value the
  lake held for that key when the audit saw it gone);
- ``<table>_current``: for each primary key its newest version by the cursor column,
  except keys whose tombstone's ``last_version`` is at or above that version's cursor
  (a key re-inserted later, with a newer cursor, is current again).

The view's SQL text (``current_view_sql``) is the same in Athena/Trino and DuckDB: it
lists its columns (no ``SELECT *``), quotes every identifier with double quotes and uses
only ``row_number()``, ``max``, ``LEFT JOIN`` and ``GROUP BY``. Its relations are
unqualified: Athena resolves them in the view's own Glue database, DuckDB in the
database file's schema. Pure functions, no I/O and no pyarrow (the commit step uses
them).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

CURRENT_SUFFIX: Final = "_current"
TOMBSTONES_SUFFIX: Final = "_tombstones"
TOMBSTONES_PREFIX: Final = "_tombstones/"
DELETED_AT: Final = "deleted_at"
LAST_VERSION: Final = "last_version"
_RANK: Final = "_version_rank"
_REVIVED_AT: Final = "_revived_at"  # the key's latest revival marker, in the tombstones


@dataclass(frozen=True)
class TableColumns:
    """What the views of one table need: its columns (name, Glue/Hive type) in order,
    its primary key (empty: none) and its cursor column."""

    table: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    cursor: str = "last_updated"

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.columns]

    def type_of(self, name: str) -> str:
        return dict(self.columns)[name]

    @property
    def tombstone_columns(self) -> tuple[tuple[str, str], ...]:
        """The tombstones' schema: the key, ``deleted_at``, ``last_version``."""
        keys = tuple((name, self.type_of(name)) for name in self.key)
        return (*keys, (DELETED_AT, "timestamp"), (LAST_VERSION, self.type_of(self.cursor)))

    @property
    def has_current_view(self) -> bool:
        return bool(self.key)


def quote(identifier: str) -> str:
    """``identifier`` as a double-quoted SQL identifier (Trino and DuckDB alike)."""
    return '"' + identifier.replace('"', '""') + '"'


def current_view_sql(columns: TableColumns) -> str:
    """The ``<table>_current`` view's SELECT: valid Trino/Athena and DuckDB SQL."""
    if not columns.key:
        raise ValueError(f"table {columns.table} has no primary key: no current view")
    table, cursor = columns.table, quote(columns.cursor)
    listed = ", ".join(quote(name) for name in columns.names)
    outer = ", ".join(f"v.{quote(name)}" for name in columns.names)
    key = ", ".join(quote(name) for name in columns.key)
    joined = " AND ".join(f"d.{quote(name)} = v.{quote(name)}" for name in columns.key)
    last, at, revived = quote(LAST_VERSION), quote(DELETED_AT), quote(_REVIVED_AT)
    # A tombstone is in force unless a revival marker (``last_version`` null: the audit
    # found the key live again) came after it; the key's tombstones in force hide its
    # versions up to the greatest of their ``last_version``.
    # Every identifier is quoted by ``quote``; no value is interpolated.
    return (
        f"SELECT {outer}\n"  # nosec B608
        f"FROM (\n"
        f"  SELECT {listed},\n"
        f"    row_number() OVER (PARTITION BY {key} ORDER BY {cursor} DESC) AS {quote(_RANK)}\n"
        f"  FROM {quote(table)}\n"
        f") AS v\n"
        f"LEFT JOIN (\n"
        f"  SELECT {key}, max({last}) AS {last}\n"
        f"  FROM (\n"
        f"    SELECT {key}, {last}, {at},\n"
        f"      max(CASE WHEN {last} IS NULL THEN {at} END) OVER (PARTITION BY {key})"
        f" AS {revived}\n"
        f"    FROM {quote(table + TOMBSTONES_SUFFIX)}\n"
        f"  ) AS t\n"
        f"  WHERE {last} IS NOT NULL AND ({revived} IS NULL OR {at} > {revived})\n"
        f"  GROUP BY {key}\n"
        f") AS d ON {joined}\n"
        f"WHERE v.{quote(_RANK)} = 1 AND (d.{last} IS NULL OR d.{last} < v.{cursor})"
    )


# --- Athena's (Presto's) stored view format in Glue ---

_PRESTO_SCALARS = {
    "int": "integer",
    "string": "varchar",
    "float": "real",
    "binary": "varbinary",
}


def presto_type(hive: str) -> str:
    """A Glue/Hive type as a Presto/Trino type (how Athena's views declare columns)."""
    hive = hive.strip()
    if hive.startswith("array<") and hive.endswith(">"):
        return f"array({presto_type(hive[6:-1])})"
    if hive.startswith("struct<") and hive.endswith(">"):
        fields = [field.split(":", 1) for field in _split_top(hive[7:-1])]
        return "row(" + ", ".join(f"{name} {presto_type(t)}" for name, t in fields) + ")"
    return _PRESTO_SCALARS.get(hive, hive)


def _split_top(text: str) -> list[str]:
    """``text`` split at the commas not nested in ``<>``."""
    parts, depth, start = [], 0, 0
    for at, char in enumerate(text):
        depth += {"<": 1, ">": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:at])
            start = at + 1
    parts.append(text[start:])
    return parts


def presto_view_text(sql: str, catalog: str, schema: str, columns: TableColumns) -> str:
    """Glue's ``ViewOriginalText`` of an Athena view: ``/* Presto View: <base64 json> */``."""
    body = {
        "originalSql": sql,
        "catalog": catalog,
        "schema": schema,
        "columns": [{"name": n, "type": presto_type(t)} for n, t in columns.columns],
    }
    encoded = base64.b64encode(json.dumps(body).encode()).decode()
    return f"/* Presto View: {encoded} */"


def parse_presto_view_text(text: str) -> dict[str, object]:
    """The JSON of a ``presto_view_text`` (for tests and for checking a stored view)."""
    match = re.fullmatch(r"/\* Presto View: ([A-Za-z0-9+/=]+) \*/", text)
    if match is None:
        raise ValueError("not a Presto view's text")
    body: dict[str, object] = json.loads(base64.b64decode(match.group(1)))
    return body


# --- DuckDB over a folder standing in for the bucket (the local lake) ---


def duckdb_statements(lake: str, columns: TableColumns, tombstone_files: bool) -> list[str]:
    """The statements creating ``<table>``, ``<table>_tombstones`` and ``<table>_current``
    as DuckDB views over the folder ``lake`` (its files are read when queried).

    ``tombstone_files``: whether any tombstone file exists (DuckDB's ``read_parquet``
    refuses a glob matching nothing); without, the tombstones are an empty relation of
    their schema, taken from the raw table's own columns.
    """
    table = columns.table
    root = lake.rstrip("/")
    statements = [
        f"CREATE OR REPLACE VIEW {quote(table)} AS SELECT * FROM read_parquet("  # nosec B608
        f"{_literal(f'{root}/{table}/*/*/*/*.parquet')}, union_by_name = true)"
    ]
    if columns.key:
        tombstones = quote(table + TOMBSTONES_SUFFIX)
        if tombstone_files:
            glob = f"{root}/{TOMBSTONES_PREFIX}{table}/*/*/*/*.parquet"
            source = f"SELECT * FROM read_parquet({_literal(glob)}, union_by_name = true)"  # nosec B608
        else:
            keys = ", ".join(quote(name) for name in columns.key)
            source = (
                f"SELECT {keys}, CAST(NULL AS TIMESTAMPTZ) AS {quote(DELETED_AT)},"  # nosec B608
                f" {quote(columns.cursor)} AS {quote(LAST_VERSION)}"
                f" FROM {quote(table)} WHERE false"
            )
        statements.append(f"CREATE OR REPLACE VIEW {tombstones} AS {source}")
        statements.append(
            f"CREATE OR REPLACE VIEW {quote(table + CURRENT_SUFFIX)} AS\n"
            + current_view_sql(columns)
        )
    return statements


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def table_columns_of(
    table: str, columns: Sequence[Sequence[str]], key: Sequence[str], cursor: str
) -> TableColumns:
    """A :class:`TableColumns` from a payload's JSON lists."""
    return TableColumns(
        table, tuple((str(n), str(t)) for n, t in columns), tuple(str(k) for k in key), cursor
    )
