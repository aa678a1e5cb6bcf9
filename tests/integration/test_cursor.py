"""Windows are instants; cursor ranges follow the source's own clock, DST included.

Europe/London fell back at 2024-10-27 01:00 UTC: the wall clock went from 01:59:59 BST
back to 01:00 GMT, so local times 01:00-02:00 happened twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from totes_ingest.cursor import CursorRange, cursor_range, floor_to, zone_has_transitions
from totes_ingest.source import SourceTable

pytestmark = pytest.mark.integration

LAG = timedelta(minutes=5)
NAIVE = SourceTable("public", "t", 1, "timestamp", 6, ("id",))
AWARE = SourceTable("public", "t", 1, "timestamptz", 6, ("id",))
SECONDS = SourceTable("public", "t", 1, "timestamp", 0, ("id",))


def utc(hour: int, minute: int) -> datetime:
    return datetime(2024, 10, 27, hour, minute)


def local(hour: int, minute: int) -> datetime:
    return datetime(2024, 10, 27, hour, minute)


def _range(conn: Any, start: datetime, end: datetime, previous: datetime) -> CursorRange:
    return cursor_range(conn, NAIVE, "Europe/London", start, end, previous, LAG)


def test_a_first_window_reads_everything_below_the_local_end(conn: Any) -> None:
    first = cursor_range(conn, NAIVE, "Europe/London", None, utc(0, 30), None, LAG)
    assert first == CursorRange(None, local(1, 30))


def test_before_the_fall_back_the_range_is_the_local_window_and_the_overlap(conn: Any) -> None:
    assert _range(conn, utc(0, 30), utc(0, 50), local(1, 30)) == CursorRange(
        local(1, 30), local(1, 50), local(1, 25)
    )


def test_a_window_across_the_fall_back_rereads_the_repeated_hour(conn: Any) -> None:
    # the new range reaches the highest local time shown (02:00), and the re-read range
    # reaches down to the lowest (01:00, just after the change)
    assert _range(conn, utc(0, 50), utc(1, 10), local(1, 50)) == CursorRange(
        local(1, 50), local(2, 0), local(0, 55)
    )


def test_inside_the_repeated_hour_every_value_is_checked_against_the_lake(conn: Any) -> None:
    assert _range(conn, utc(1, 10), utc(1, 30), local(2, 0)) == CursorRange(
        local(2, 0), local(2, 0), local(1, 5)
    )


def test_after_the_repeated_hour_windows_are_ordinary_again(conn: Any) -> None:
    assert _range(conn, utc(1, 50), utc(2, 10), local(2, 0)) == CursorRange(
        local(2, 0), local(2, 10), local(1, 45)
    )


def test_ranges_chain_through_the_previous_cursor_end_even_if_the_zone_changes(
    conn: Any,
) -> None:
    # GIVEN the previous window ended at 10:00 as New York's wall clock, now the zone is UTC
    rng = cursor_range(conn, NAIVE, "UTC", utc(12, 0), utc(12, 5), local(10, 0), LAG)
    # THEN nothing between the two is skipped
    assert rng.start == local(10, 0)
    assert rng.end == local(12, 5)


def test_a_zone_moved_backwards_leaves_the_range_empty_and_rereads_it(conn: Any) -> None:
    rng = cursor_range(conn, NAIVE, "UTC", utc(12, 0), utc(12, 5), local(14, 0), LAG)
    assert rng == CursorRange(local(14, 0), local(14, 0), local(11, 55))


def test_timestamptz_cursors_are_compared_as_instants(conn: Any) -> None:
    rng = cursor_range(conn, AWARE, "Europe/London", utc(0, 50), utc(1, 10), utc(0, 50), LAG)
    assert rng == CursorRange(utc(0, 50), utc(1, 10), utc(0, 45))
    assert "+00'" in rng.predicate(AWARE, "last_updated")


def test_a_lower_precision_column_floors_the_end(conn: Any) -> None:
    end = datetime(2024, 6, 1, 12, 0, 0, 700_000)
    rng = cursor_range(conn, SECONDS, "UTC", None, end, None, LAG)
    assert rng.end == datetime(2024, 6, 1, 12, 0, 0)
    assert floor_to(datetime(2024, 6, 1, 12, 0, 0, 123_456), 3).microsecond == 123_000


def test_a_posix_rule_is_read_from_the_database(conn: Any) -> None:
    # a rule the tz database does not know: UTC+1 until day 300, 02:00 local
    zone = "AAA0BBB-1,J1/0,J300/2"
    assert zone_has_transitions(conn, zone)
    assert not zone_has_transitions(conn, "UTC")
    before = cursor_range(conn, NAIVE, zone, None, datetime(2024, 10, 26, 0, 30), None, LAG)
    assert before.end == datetime(2024, 10, 26, 1, 30)


def test_the_re_read_is_off_with_no_lag_outside_a_fall_back(conn: Any) -> None:
    rng = cursor_range(conn, NAIVE, "UTC", utc(12, 0), utc(12, 5), local(12, 0), timedelta(0))
    assert rng.reread_from is None
    assert rng.reread_predicate(NAIVE, "last_updated") is None
