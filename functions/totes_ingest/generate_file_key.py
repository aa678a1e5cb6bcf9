"""Object keys of the lake: ``table/yyyy/mm/dd/hhmmssffffff.parquet``."""

from __future__ import annotations

import re
from datetime import datetime

from totes_ingest.identifiers import is_valid_table_name

_KEY = re.compile(
    r"(?P<table>[a-z_][a-z0-9_]*)/(\d{4})/(\d{2})/(\d{2})/(\d{12})\.parquet", re.ASCII
)


def generate_file_key(table_name: str, end_time: datetime, extension: str = "parquet") -> str:
    """Key of the object holding ``table_name``'s rows up to ``end_time`` (exclusive).

    The key is a pure function of the table and the window's end, so a retried write
    lands on the same key instead of adding a duplicate.
    """
    if not is_valid_table_name(table_name):
        raise ValueError(f"not a valid table name: {table_name!r}")
    if not extension.isalnum():
        raise ValueError(f"not a valid extension: {extension!r}")
    return f"{table_name}/{end_time:%Y/%m/%d/%H%M%S%f}.{extension}"


def parse_file_key(key: str) -> tuple[str, datetime] | None:
    """``(table, end_time)`` of a lake key, or None if ``key`` is not one."""
    match = _KEY.fullmatch(key)
    if match is None:
        return None
    year, month, day, clock = match.group(2, 3, 4, 5)
    try:
        end = datetime.strptime(f"{year}{month}{day}{clock}", "%Y%m%d%H%M%S%f")
    except ValueError:
        return None
    return match["table"], end
