"""Source clocks for the tests: a time zone that falls back when a test needs it to."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def fall_back_zone(seconds: float) -> tuple[str, datetime]:
    """A POSIX zone, UTC+1 until ``seconds`` from now then UTC, and the change (naive UTC).

    PostgreSQL reads POSIX rules itself (``AAA0BBB-1``: standard time UTC, summer time
    UTC+1; ``J<day>/<time>``: the summer ends on that day of the year, at that wall-clock
    time), so the change can be put anywhere, a few seconds from now included.
    """
    change = (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0, tzinfo=None)
    local = change + timedelta(hours=1)  # the rule's time is the wall clock before it
    leap_day_passed = local.month > 2 and local.year % 4 == 0
    day = local.timetuple().tm_yday - (1 if leap_day_passed else 0)  # J days skip 29 Feb
    return f"AAA0BBB-1,J1/0,J{day}/{local:%H:%M:%S}", change
