"""Validation of the execution input, before anything is read or written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from totes_ingest.cursor import zone_has_transitions
from totes_ingest.errors import InvalidEvent
from totes_ingest.identifiers import is_valid_table_name
from totes_ingest.source import SourceTable, resolve_tables

MAX_TABLES: Final = 100


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


def validate_event(event: object, conn: Any, schema: str, zone: str) -> list[SourceTable]:
    """The event's tables, resolved; InvalidEvent otherwise (nothing has been queried
    with the names but the catalog look-up, with the names as bound parameters)."""
    tables = resolve_tables(conn, tables_from_event(event), schema)
    keyless = [t.name for t in tables.values() if not t.key and t.cursor_type == "timestamp"]
    if keyless and zone_has_transitions(conn, zone):
        raise InvalidEvent(
            f"{', '.join(keyless)}: no primary key, and last_updated is a timestamp without "
            f"time zone in {zone}, whose clock goes back at a fall-back: the versions of the "
            "repeated hour cannot be told from those already ingested; add a primary key, "
            "or make last_updated a timestamptz"
        )
    return list(tables.values())
