"""What a window reads of the cursor column: the source's time semantics.

Windows and lake keys are instants (UTC): the run's end bound comes from the database
clock and open transactions, whatever the zone of any session. The cursor column need not
be an instant: ``timestamp without time zone`` set by ``now()`` holds the writer's local
wall-clock time in the source's zone (the database's ``TimeZone``, or ``SOURCE_TIMEZONE``),
which repeats an hour at every fall-back. So each window maps its instants to a range of
cursor values:

- ``L(t)`` is the wall-clock time at instant ``t``; ``S(t)`` its running maximum, the
  highest value any writer before ``t`` can have written. ``S`` never goes back.
- A window ``[W, E)`` reads every row with a cursor value in ``[C, B)``: ``C`` is the
  previous window's ``B`` (chained through the claims, so the ranges tile the cursor
  axis, even if the zone or the rules change between runs) and ``B = S(E)``, floored to
  the column's precision (a ``timestamp(0)`` rounds ``now()`` up or down).
- It also re-reads ``[R, C)``, ``R = min(C, m) - REREAD_LAG_SECONDS``, where ``m`` is the
  lowest wall-clock time inside the window: the rows there whose (key, cursor) pair the
  lake does not hold yet are new. Across a fall-back that is the repeated hour (``S``
  stands still while ``L`` repeats it); otherwise it is the re-read overlap, a defence
  against writers the end bound could not see.

For ``timestamptz`` cursors ``L`` is the identity: values are compared as instants.

Zone transitions come from the database itself (any zone it accepts, POSIX rules
included), sampled every 15 minutes and refined to the second around each change. This
assumes transitions lie on whole seconds, at least 15 minutes apart, and that no
fall-back repeats more than 25 hours (the largest in the tz database is one day).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from totes_ingest.db_errors import source_errors
from totes_ingest.format_time import format_time, parse_time
from totes_ingest.generate_new_entry_query import validated_time
from totes_ingest.source import SourceTable

_SAMPLE: Final = timedelta(minutes=15)
_REACH: Final = timedelta(hours=25)
_OFFSETS_SQL = """
SELECT g AT TIME ZONE 'UTC',
       extract(epoch FROM (g AT TIME ZONE :zone) - (g AT TIME ZONE 'UTC'))::int8
FROM generate_series(CAST(:first AS timestamptz), CAST(:last AS timestamptz),
                     CAST(:step AS interval)) AS g
"""


def instant_literal(moment: datetime) -> str:
    """A naive UTC instant as an SQL literal that means the same in any session zone."""
    return f"TIMESTAMPTZ '{format_time(moment)}+00'"


@dataclass(frozen=True)
class CursorRange:
    """Cursor values a window reads: all of ``[start, end)``; of ``[reread_from, start)``
    only the (key, cursor) pairs the lake does not hold. Naive datetimes: wall-clock
    times of the source zone for ``timestamp``, UTC for ``timestamptz``."""

    start: datetime | None  # None: from the beginning
    end: datetime
    reread_from: datetime | None = None  # None: nothing to re-read

    def __post_init__(self) -> None:
        if self.start is not None and self.end < self.start:
            raise ValueError(f"cursor range ends before it starts: {self}")
        if self.reread_from is not None and (self.start is None or self.reread_from > self.start):
            raise ValueError(f"re-read range must end where the range starts: {self}")

    def literal(self, table: SourceTable, value: datetime) -> str:
        if table.cursor_type == "timestamptz":
            return instant_literal(value)
        return f"TIMESTAMP '{format_time(value)}'"

    def predicate(self, table: SourceTable, column: str) -> str:
        """SQL: the cursor ``column`` in ``[start, end)`` (bounds are validated literals)."""
        clauses = [f"{column} < {self.literal(table, self.end)}"]
        if self.start is not None:
            clauses.insert(0, f"{column} >= {self.literal(table, self.start)}")
        return " AND ".join(clauses)

    def reread_predicate(self, table: SourceTable, column: str) -> str | None:
        if self.reread_from is None or self.start is None or self.reread_from >= self.start:
            return None
        reread = CursorRange(self.reread_from, self.start)
        return reread.predicate(table, column)

    @classmethod
    def from_payload(cls, value: object) -> CursorRange:
        """Inverse of :meth:`to_payload`; ValueError if malformed or inconsistent."""
        if not isinstance(value, dict) or not isinstance(value.get("end"), str):
            raise ValueError(f"not a cursor range: {str(value)[:80]}")

        def moment(name: str) -> datetime | None:
            text = value.get(name)
            return None if text is None else parse_time(validated_time(text))

        end = moment("end")
        assert end is not None
        return cls(start=moment("start"), end=end, reread_from=moment("reread_from"))

    def to_payload(self) -> dict[str, str | None]:
        return {
            "start": None if self.start is None else format_time(self.start),
            "end": format_time(self.end),
            "reread_from": None if self.reread_from is None else format_time(self.reread_from),
        }


_TRANSITIONS_SQL = """
SELECT count(DISTINCT extract(epoch FROM (g AT TIME ZONE :zone) - (g AT TIME ZONE 'UTC')))
FROM generate_series(now() - interval '2 years', now() + interval '2 years',
                     interval '1 day') AS g
"""


def zone_has_transitions(conn: Any, zone: str) -> bool:
    """Whether ``zone`` changed or will change its UTC offset within two years of now."""
    with source_errors("time zone lookup"):
        ((offsets,),) = conn.run(_TRANSITIONS_SQL, zone=zone)
    return int(offsets) > 1


def floor_to(value: datetime, precision: int) -> datetime:
    """``value`` truncated to ``precision`` fractional digits of a second."""
    step = 10 ** (6 - precision)
    return value.replace(microsecond=value.microsecond - value.microsecond % step)


def cursor_range(
    conn: Any,
    table: SourceTable,
    zone: str,
    start: datetime | None,
    end: datetime,
    previous_end: datetime | None,
    reread_lag: timedelta,
) -> CursorRange:
    """The cursor range of the window ``[start, end)`` (instants, naive UTC).

    ``previous_end`` is the cursor end of the table's previous window (None: first).
    """
    clock = _WallClock(conn, zone) if table.cursor_type == "timestamp" else None
    high = end if clock is None else clock.running_max(end)
    upper = floor_to(high, table.precision)
    if start is None:
        return CursorRange(None, upper)
    if previous_end is None:
        raise ValueError("a window after the first needs the previous window's cursor end")
    lowest = start if clock is None else clock.lowest(start, end)
    upper = max(upper, previous_end)
    reread_from = min(previous_end, lowest) - reread_lag
    return CursorRange(previous_end, upper, reread_from if reread_from < previous_end else None)


@dataclass(frozen=True)
class _Transition:
    at: datetime  # the first instant (naive UTC) with the new offset
    before: timedelta
    after: timedelta


class _WallClock:
    """Wall-clock time of a zone at instants, from the database's own zone rules."""

    def __init__(self, conn: Any, zone: str) -> None:
        self.conn = conn
        self.zone = zone

    def _offsets(self, first: datetime, last: datetime, step: timedelta) -> list[Any]:
        with source_errors("time zone lookup"):
            rows: list[Any] = self.conn.run(
                _OFFSETS_SQL,
                zone=self.zone,
                first=f"{format_time(first)}+00",
                last=f"{format_time(last)}+00",
                step=f"{int(step.total_seconds())} seconds",
            )
        return rows

    def _transitions(self, first: datetime, last: datetime) -> list[_Transition]:
        # Samples on a whole-second grid, so refining finds each (whole-second) change.
        grid = first.replace(microsecond=0) - timedelta(seconds=first.second)
        samples = self._offsets(grid, last, _SAMPLE)
        if samples[-1][0] < last:
            samples += self._offsets(last, last, _SAMPLE)
        found = []
        for (previous, before), (at, after) in itertools.pairwise(samples):
            if before != after:
                fine = self._offsets(previous, at, timedelta(seconds=1))
                moment = next(t for t, offset in fine if offset == after)
                found.append(
                    _Transition(moment, timedelta(seconds=before), timedelta(seconds=after))
                )
        return found

    def local(self, instant: datetime) -> datetime:
        ((_, offset),) = self._offsets(instant, instant, _SAMPLE)
        return instant + timedelta(seconds=offset)

    def running_max(self, instant: datetime) -> datetime:
        """``S(t)``: the highest wall-clock time any instant before ``t`` showed (sup)."""
        highest = self.local(instant)
        for change in self._transitions(instant - _REACH, instant):
            if change.after < change.before and change.at <= instant:
                highest = max(highest, change.at + change.before)
        return highest

    def lowest(self, start: datetime, end: datetime) -> datetime:
        """``m``: the lowest wall-clock time shown inside ``[start, end)``."""
        lowest = self.local(start)
        for change in self._transitions(start, min(end, start + _REACH)):
            if change.after < change.before and start < change.at < end:
                lowest = min(lowest, change.at + change.after)
        return lowest
