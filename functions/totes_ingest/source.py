"""A source table, resolved once: its schema-qualified relation, cursor column and key.

Every step names a table by the same resolution (``resolve_tables``): a relation of the
configured source schema (``SOURCE_SCHEMA``, default ``public``), never whatever the
search path finds first, so a table named like a catalog view is that table. A
partition is refused (its rows already land under its parent's prefix).

The cursor column is ``last_updated``; it must be ``timestamp`` or ``timestamptz`` of
any precision (a lower precision is handled by flooring the window's bounds, see
``cursor``). The key (the primary key, else a unique index over NOT NULL columns) tells
row versions apart where a window re-reads values already ingested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from totes_ingest.db_errors import source_errors
from totes_ingest.errors import IngestError, InvalidEvent, SourceError
from totes_ingest.identifiers import quote_ident

CURSOR_COLUMN: Final = "last_updated"
CursorType = Literal["timestamp", "timestamptz"]
_CURSOR_TYPES: Final[dict[str, CursorType]] = {
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
}

_RELATIONS_SQL = """
SELECT c.relname, c.oid::int8, c.relkind::text, c.relispartition,
       (SELECT p.relname FROM pg_catalog.pg_inherits i
        JOIN pg_catalog.pg_class p ON p.oid = i.inhparent WHERE i.inhrelid = c.oid LIMIT 1),
       t.typname, a.atttypmod
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute AS a
       ON a.attrelid = c.oid AND a.attname = :cursor AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
WHERE n.nspname = :schema AND c.relname = ANY(CAST(:names AS text[]))
"""
# The primary key, else the first unique, non-partial index over NOT NULL columns only.
_KEY_SQL = """
SELECT x.indexrelid, x.indisprimary,
       array_agg(a.attname::text ORDER BY array_position(x.indkey::int2[], a.attnum)),
       bool_and(a.attnotnull),
       array_agg(coalesce(b.typname, t.typname)::text
                 ORDER BY array_position(x.indkey::int2[], a.attnum))
FROM pg_catalog.pg_index AS x
JOIN pg_catalog.pg_attribute AS a ON a.attrelid = x.indrelid AND a.attnum = ANY(x.indkey)
JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_type AS b ON b.oid = t.typbasetype AND t.typtype = 'd'
WHERE x.indrelid = :rel AND x.indisunique AND x.indpred IS NULL AND x.indexprs IS NULL
GROUP BY x.indexrelid, x.indisprimary
ORDER BY x.indisprimary DESC, x.indexrelid
"""


@dataclass(frozen=True)
class SourceTable:
    """One table of the source, as every step reads it."""

    schema: str
    name: str
    oid: int
    cursor_type: CursorType
    precision: int  # fractional digits of the cursor column, 0-6
    key: tuple[str, ...]  # empty: no primary key nor NOT NULL unique index
    key_types: tuple[str, ...] = ()  # each key column's type name (a domain's: its base's)

    @property
    def relation(self) -> str:
        """The schema-qualified, quoted name used in every statement."""
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"


def resolve_tables(
    conn: Any,
    names: Sequence[str],
    schema: str,
    *,
    views: bool = False,
    error: type[IngestError] = InvalidEvent,
) -> dict[str, SourceTable]:
    """Each of ``names`` as a table of ``schema``; ``error`` names every one that is not.

    ``views`` also accepts views and materialized views (for ad-hoc extracts; the
    pipeline ingests tables only).
    """
    kinds = ("r", "p", "v", "m") if views else ("r", "p")
    only = names[0] if len(names) == 1 else None
    with source_errors("table lookup", table=only):
        rows = conn.run(_RELATIONS_SQL, names=list(names), schema=schema, cursor=CURSOR_COLUMN)
    found = {row[0]: row for row in rows}
    problems: list[str] = []
    tables: dict[str, SourceTable] = {}
    for name in names:
        row = found.get(name)
        problem = _problem(name, schema, row, kinds)
        if problem is not None:
            problems.append(problem)
            continue
        assert row is not None
        _, oid, _, _, _, typname, typmod = row
        with source_errors("key lookup", table=name):
            key, key_types = _key(conn, oid)
        tables[name] = SourceTable(
            schema=schema,
            name=name,
            oid=int(oid),
            cursor_type=_CURSOR_TYPES[typname],
            precision=6 if typmod is None or typmod < 0 else int(typmod),
            key=key,
            key_types=key_types,
        )
    if problems:
        raise error("not tables of the source: " + "; ".join(problems), table=only)
    return tables


_REPLICATED_SQL = """
SELECT DISTINCT c.relname::text, s.subname::text
FROM pg_catalog.pg_subscription_rel AS r
JOIN pg_catalog.pg_class AS c ON c.oid = r.srrelid
JOIN pg_catalog.pg_subscription AS s ON s.oid = r.srsubid
WHERE r.srrelid = ANY(CAST(:oids AS oid[]))
ORDER BY 1, 2
"""


def refuse_replicated(conn: Any, tables: Sequence[SourceTable]) -> None:
    """InvalidEvent naming each table a logical-replication subscription fills here.

    Its rows carry the publisher's ``last_updated``, and the publisher's open transactions
    hold no lock here: no end bound computed on this database can wait for them.
    """
    with source_errors("subscription lookup"):
        rows = conn.run(_REPLICATED_SQL, oids=[t.oid for t in tables])
    if rows:
        named = "; ".join(f"{table}: replicated by subscription {sub}" for table, sub in rows)
        raise InvalidEvent(
            f"{named}. A replicated table's last_updated values are the publisher's, whose "
            "open transactions cannot be seen here, so no end bound is safe: ingest it from "
            "the publisher"
        )


# Bytes on disk of each table (its TOAST too), by oid; of a partitioned one, of its
# partitions (its partition tree holds itself and them; a plain table has no tree).
_SIZES_SQL = """
SELECT o.oid::int8, pg_catalog.pg_table_size(o.oid)
       + (SELECT coalesce(sum(pg_catalog.pg_table_size(t.relid)), 0)::int8
          FROM pg_catalog.pg_partition_tree(o.oid::regclass) AS t)
FROM unnest(CAST(:oids AS oid[])) AS o(oid)
"""


def largest_first(conn: Any, tables: Sequence[SourceTable]) -> list[SourceTable]:
    """``tables`` by their size on disk, largest first (ties in the given order).

    The run's Map starts tables in this order, at most its concurrency at once: the
    longest extracts begin first and the small tables fill the slots beside them, instead
    of the largest starting last and running alone at the end.
    """
    if len(tables) < 2:
        return list(tables)
    with source_errors("table sizes"):
        sizes = dict(conn.run(_SIZES_SQL, oids=[t.oid for t in tables]))
    return sorted(tables, key=lambda t: -sizes.get(t.oid, 0))


def resolve_table(conn: Any, name: str, schema: str, *, views: bool = False) -> SourceTable:
    """One table, once the run has started: one that went missing is a SourceError."""
    return resolve_tables(conn, [name], schema, views=views, error=SourceError)[name]


def _problem(name: str, schema: str, row: Any, kinds: tuple[str, ...]) -> str | None:
    if row is None:
        return f"{name}: does not exist in schema {schema}"
    if row[2] not in kinds:
        return f"{name}: not a table of schema {schema} (relkind {row[2]})"
    _, _, _, is_partition, parent, typname, _ = row
    if is_partition:
        return f"{name}: a partition of {parent}; ingest {parent} instead"
    if typname is None:
        return f"{name}: has no {CURSOR_COLUMN} column"
    if typname not in _CURSOR_TYPES:
        return f"{name}: {CURSOR_COLUMN} is {typname}, not a timestamp or timestamptz"
    return None


def _key(conn: Any, oid: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    for _, _, columns, not_null, types in conn.run(_KEY_SQL, rel=oid):
        if not_null:
            return tuple(columns), tuple(types)
    return (), ()
