"""Validation of the execution input, before anything is read or written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from totes_ingest.errors import InvalidEvent
from totes_ingest.identifiers import is_valid_table_name

MAX_TABLES: Final = 100

_INGESTIBLE_TABLES_SQL = """
SELECT c.relname
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
JOIN pg_attribute AS a ON a.attrelid = c.oid
WHERE n.nspname = current_schema()
  AND c.relkind IN ('r', 'p')
  AND a.attname = 'last_updated' AND NOT a.attisdropped
  AND c.relname = ANY(CAST(:names AS text[]))
"""


def _shown(value: object, limit: int = 40) -> str:
    """A bounded, printable rendering of hostile input for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tables_from_event(event: object) -> list[str]:
    """The ``tables_to_query`` list, checked for shape, duplicates and name syntax."""
    if not isinstance(event, Mapping):
        raise InvalidEvent("the execution input must be a JSON object")
    if "tables_to_query" not in event:
        raise InvalidEvent("the execution input has no 'tables_to_query'")
    tables = event["tables_to_query"]
    if isinstance(tables, str | bytes) or not isinstance(tables, Sequence):
        raise InvalidEvent("'tables_to_query' must be a list of table names")
    if not tables:
        raise InvalidEvent("'tables_to_query' is empty")
    if len(tables) > MAX_TABLES:
        raise InvalidEvent(f"'tables_to_query' names {len(tables)} tables; at most {MAX_TABLES}")
    bad = [name for name in tables if not is_valid_table_name(name)]
    if bad:
        shown = ", ".join(_shown(name) for name in bad[:5])
        raise InvalidEvent(f"not valid table names: {shown}")
    duplicates = sorted({name for name in tables if tables.count(name) > 1})
    if duplicates:
        raise InvalidEvent(f"duplicate table names: {', '.join(duplicates)}")
    return list(tables)


def check_tables_exist(conn: Any, tables: list[str]) -> None:
    """Every table must exist in the source schema and have a ``last_updated`` column."""
    found = {row[0] for row in conn.run(_INGESTIBLE_TABLES_SQL, names=tables)}
    missing = [name for name in tables if name not in found]
    if missing:
        raise InvalidEvent(
            "not tables of the source with a last_updated column: " + ", ".join(missing)
        )


def validate_event(event: object, conn: Any) -> list[str]:
    """Validated table names; InvalidEvent otherwise (nothing has been queried with them)."""
    tables = tables_from_event(event)
    check_tables_exist(conn, tables)
    return tables


def require_keys(payload: Mapping[str, Any], *keys: str) -> None:
    """Step payloads come from our own ASL; a missing key is a wiring bug, said plainly."""
    missing = [key for key in keys if key not in payload]
    if missing:
        raise InvalidEvent(f"step input lacks {', '.join(missing)}")
