"""Object keys of the lake, all built and parsed here.

- ``table/yyyy/mm/dd/hhmmssffffff.parquet``: a committed window, named by its end (an
  instant, UTC, to the microsecond), so keys sort in commit order;
- ``_staging/table/<start>-<end>-<run>.parquet``: a run's extract of a window, before
  its commit (``<start>`` is ``initial`` for a table's first window);
- ``_claims/table/<start>.json``: the claim that makes one window the successor of the
  watermark ``<start>``;
- ``table/yyyy/mm/dd/hhmmssffffff-repair-<n>.parquet``: row versions the audit found
  missing and wrote (named by the audit's observation instant, UTC, and the number of its
  key-space partition): committed objects of the table, never links of its watermark chain
  (:func:`parse_file_key` does not read them as window keys);
- ``_tombstones/table/yyyy/mm/dd/hhmmssffffff.parquet``: the keys the audit found deleted
  at the source, named by its observation instant (UTC).
"""

from __future__ import annotations

import re
from datetime import datetime

from totes_ingest.config import CLAIMS_PREFIX, STAGING_PREFIX, TOMBSTONES_PREFIX
from totes_ingest.identifiers import is_valid_table_name

_KEY = re.compile(
    r"(?P<table>[a-z_][a-z0-9_]*)/(\d{4})/(\d{2})/(\d{2})/(\d{12})\.parquet", re.ASCII
)
_REPAIR_KEY = re.compile(
    r"(?P<table>[a-z_][a-z0-9_]*)/(\d{4})/(\d{2})/(\d{2})/(\d{12})-repair-(?P<part>\d{1,6})"
    r"\.parquet",
    re.ASCII,
)
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,80}", re.ASCII)


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


def stamp(moment: datetime | None) -> str:
    """A window bound as it appears in staging and claim keys."""
    return "initial" if moment is None else f"{moment:%Y%m%dT%H%M%S%f}"


def parse_stamp(text: str) -> datetime | None:
    """Inverse of :func:`stamp` (None for ``initial``); ValueError if malformed."""
    return None if text == "initial" else datetime.strptime(text, "%Y%m%dT%H%M%S%f")


def is_valid_run_id(run_id: object) -> bool:
    return isinstance(run_id, str) and _RUN_ID.fullmatch(run_id) is not None


def staging_key(table: str, start: datetime | None, end: datetime, run_id: str) -> str:
    if not is_valid_run_id(run_id):
        raise ValueError(f"not a valid run id: {run_id!r}")
    return f"{STAGING_PREFIX}{table}/{stamp(start)}-{stamp(end)}-{run_id}.parquet"


def plan_key(table: str, run_id: str) -> str:
    """Where a run keeps the plan of a table's window cut into sub-windows (sub_windows)."""
    if not is_valid_run_id(run_id):
        raise ValueError(f"not a valid run id: {run_id!r}")
    return f"{STAGING_PREFIX}{table}/plan-{run_id}.json"


def claim_key(table: str, start: datetime | None) -> str:
    return f"{CLAIMS_PREFIX}{table}/{stamp(start)}.json"


def repair_key(table: str, observed: datetime, partition: int) -> str:
    """Key of the audit's repair object for one partition of ``table``'s key space."""
    if not is_valid_table_name(table):
        raise ValueError(f"not a valid table name: {table!r}")
    if not 0 <= partition < 1_000_000:
        raise ValueError(f"not a partition number: {partition!r}")
    return f"{table}/{observed:%Y/%m/%d/%H%M%S%f}-repair-{partition}.parquet"


def parse_repair_key(key: str) -> tuple[str, datetime, int] | None:
    """``(table, observation instant, partition)`` of a repair key, or None."""
    match = _REPAIR_KEY.fullmatch(key)
    if match is None:
        return None
    year, month, day, clock = match.group(2, 3, 4, 5)
    try:
        observed = datetime.strptime(f"{year}{month}{day}{clock}", "%Y%m%d%H%M%S%f")
    except ValueError:
        return None
    return match["table"], observed, int(match["part"])


def repair_prefix(table: str) -> str:
    """The prefix below which the table's repair objects (and its windows) lie."""
    return f"{table}/"


def tombstone_key(table: str, observed: datetime) -> str:
    """Key of the tombstones one audit wrote for ``table`` (``observed``: UTC)."""
    if not is_valid_table_name(table):
        raise ValueError(f"not a valid table name: {table!r}")
    return f"{TOMBSTONES_PREFIX}{table}/{observed:%Y/%m/%d/%H%M%S%f}.parquet"


def tombstone_prefix(table: str) -> str:
    return f"{TOMBSTONES_PREFIX}{table}/"


def is_tombstone_key(key: str, table: str) -> bool:
    rest = key.removeprefix(tombstone_prefix(table))
    return rest != key and re.fullmatch(r"\d{4}/\d{2}/\d{2}/\d{12}\.parquet", rest) is not None
