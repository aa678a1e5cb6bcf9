"""The SQL that selects a table's rows modified inside a window."""

from __future__ import annotations

import re
from datetime import datetime

from totes_ingest.errors import DateFormatError
from totes_ingest.identifiers import is_valid_table_name, quote_ident

__all__ = ["DateFormatError", "generate_new_entry_query", "validated_time", "window_predicate"]

_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,6})?", re.ASCII)


def validated_time(text: object, *, table: str | None = None) -> str:
    """Return ``text`` if it is a real ``format_time`` timestamp, else raise DateFormatError.

    The bounds end up as SQL literals (COPY takes no bind parameters), so nothing but
    digits, dashes, colons, one space and one dot may pass.
    """
    if not isinstance(text, str) or _TIME.fullmatch(text) is None:
        raise DateFormatError(f"not a YYYY-MM-DD HH:MM:SS.ffffff time: {text!r}", table=table)
    try:
        datetime.fromisoformat(text)
    except ValueError as e:
        raise DateFormatError(f"not a valid time: {text!r}", table=table) from e
    return text


def window_predicate(start_time: str | None, end_time: str, *, table: str | None = None) -> str:
    """``last_updated`` in ``[start_time, end_time)``; no start means from the beginning."""
    end = validated_time(end_time, table=table)
    clauses = [f"last_updated < TIMESTAMP '{end}'"]
    if start_time is not None:
        start = validated_time(start_time, table=table)
        clauses.insert(0, f"last_updated >= TIMESTAMP '{start}'")
    return " AND ".join(clauses)


def generate_new_entry_query(table_name: str, start_time: str | None, end_time: str) -> str:
    """``SELECT *`` of the rows of ``table_name`` whose ``last_updated`` is in the window.

    ``start_time`` is inclusive and ``end_time`` exclusive, so consecutive windows share
    no row and miss none. ``start_time=None`` selects from the beginning of history.
    """
    if not is_valid_table_name(table_name):
        raise ValueError(f"not a valid table name: {table_name!r}")
    predicate = window_predicate(start_time, end_time, table=table_name)
    # The name passed the identifier pattern and is quoted; the bounds are validated.
    return f"SELECT * FROM {quote_ident(table_name)} WHERE {predicate}"  # nosec B608
