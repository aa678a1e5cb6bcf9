"""The one textual form of a timestamp used in queries and windows."""

from __future__ import annotations

from datetime import UTC, datetime

FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def format_time(date_time: datetime) -> str:
    """Return ``YYYY-MM-DD HH:MM:SS.ffffff``.

    Microseconds are kept: ToteSys timestamps are compared at full precision, and a
    millisecond bound would drop or duplicate rows at a window's edge. An aware datetime
    is converted to UTC first (the database columns are naive).
    """
    if date_time.tzinfo is not None:
        date_time = date_time.astimezone(UTC).replace(tzinfo=None)
    return date_time.strftime(FORMAT)


def parse_time(text: str) -> datetime:
    """Inverse of :func:`format_time` (also accepts fewer fractional digits)."""
    return datetime.fromisoformat(text)
