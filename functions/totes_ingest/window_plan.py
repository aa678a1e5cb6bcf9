"""A table's pending range cut into bounded sub-windows, computed in the database.

A window ``[watermark, end)`` whose cursor range holds more than ``MAX_WINDOW_ROWS`` rows
is cut at cursor values into consecutive sub-windows, each a normal link of the table's
chain (its own key, named by its end, and its own claim), committed in order.

The cuts are found by walking the cursor column in its own order, one statement a cut:

    SELECT last_updated FROM t WHERE last_updated >= lo AND last_updated < B
    ORDER BY last_updated OFFSET max_rows LIMIT 1

The value ``v`` found is the (max_rows + 1)-th row's, so ``[lo, v)`` holds at most
``max_rows`` rows and the cut is at a value: ties stay together. With an index on the
cursor column each statement reads ``max_rows`` index entries; without one, it scans the
range once. A range that fits (one ``count(*)`` first) is not walked at all. When the
first value of ``[lo, B)`` alone holds more than ``max_rows`` rows (``v`` is that
value), the sub-window is ``[lo, next value)``: above the bound, never split, reported by
a WARNING and the metric ``OversizedWindowRows``.

Cursor values are the column's own (wall-clock times of the source zone for
``timestamp``, UTC for ``timestamptz``). Each cut is also given an instant, which names
its key: the cut value itself for ``timestamptz``; for ``timestamp``, the instant that
wall-clock time shows in the source zone (PostgreSQL's ``AT TIME ZONE``), kept strictly
inside the window and strictly increasing (a fall-back's repeated hour maps two instants
to one value). The cursor ranges, not the instants, tile the cursor axis: they chain
through the claims as every window's do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from totes_ingest.cursor import CursorRange
from totes_ingest.db_errors import source_errors
from totes_ingest.identifiers import quote_ident
from totes_ingest.source import CURSOR_COLUMN, SourceTable

_TICK: Final = timedelta(microseconds=1)


@dataclass(frozen=True)
class Cut:
    """The cursor values where a range is cut, and whether the walk ran out of time."""

    values: list[datetime]
    oversized: list[int]  # indexes of the sub-windows above the bound (one tied value)
    truncated: bool  # the budget ran out: the last cut ends the plan, not the range


def _naive_utc(value: datetime) -> datetime:
    return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)


class _Walk:
    def __init__(self, conn: Any, source: SourceTable, rng: CursorRange, table: str) -> None:
        self.conn = conn
        self.source = source
        self.rng = rng
        self.table = table
        column = quote_ident(CURSOR_COLUMN)
        self.column = column
        self.select = (
            column if source.cursor_type == "timestamp" else f"({column} AT TIME ZONE 'UTC')"
        )

    def _where(self, lo: datetime | None, strict: bool = False) -> str:
        clauses = [f"{self.column} < {self.rng.literal(self.source, self.rng.end)}"]
        if lo is not None:
            op = ">" if strict else ">="
            clauses.insert(0, f"{self.column} {op} {self.rng.literal(self.source, lo)}")
        return " AND ".join(clauses)

    def _one(self, sql: str) -> datetime | None:
        with source_errors("window plan", table=self.table):
            rows = self.conn.run(sql)
        if not rows or rows[0][0] is None:
            return None
        return _naive_utc(rows[0][0])

    def nth(self, lo: datetime | None, offset: int) -> datetime | None:
        """The cursor value of the ``offset``-th row (from 0) of ``[lo, B)`` in order."""
        return self._one(
            f"SELECT {self.select} FROM {self.source.relation} "  # nosec B608
            f"WHERE {self._where(lo)} ORDER BY {self.column} OFFSET {int(offset)} LIMIT 1"
        )

    def fits(self, max_rows: int) -> bool:
        """The whole range holds at most ``max_rows`` rows: one count, no sort."""
        with source_errors("window plan", table=self.table):
            ((count,),) = self.conn.run(
                f"SELECT count(*) FROM {self.source.relation} "  # nosec B608
                f"WHERE {self._where(self.rng.start)}"
            )
        return int(count) <= max_rows

    def after(self, value: datetime) -> datetime | None:
        """The next cursor value above ``value`` in the range."""
        return self._one(
            f"SELECT min({self.select}) FROM {self.source.relation} "  # nosec B608
            f"WHERE {self._where(value, strict=True)}"
        )


def cut_points(
    conn: Any,
    source: SourceTable,
    rng: CursorRange,
    max_rows: int,
    *,
    table: str,
    deadline: float | None = None,
    max_windows: int | None = None,
) -> Cut:
    """Where ``rng`` (its ``[start, end)``) is cut so that each part holds at most
    ``max_rows`` rows, a tied value never split (see the module's docstring).

    ``deadline`` (``time.monotonic()``) and ``max_windows`` stop the walk early: the plan
    then ends at the last cut and the rest of the range is the next run's.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, not {max_rows}")
    walk = _Walk(conn, source, rng, table)
    if walk.fits(max_rows):  # the usual case: no cut, and no ordered walk without an index
        return Cut([], [], truncated=False)
    values: list[datetime] = []
    oversized: list[int] = []
    lo = rng.start
    while True:
        if max_windows is not None and len(values) >= max_windows:
            return Cut(values, oversized, truncated=bool(values))
        if deadline is not None and values and time.monotonic() > deadline:
            return Cut(values, oversized, truncated=True)
        v = walk.nth(lo, max_rows)
        if v is None:  # the rest fits
            return Cut(values, oversized, truncated=False)
        first = walk.nth(lo, 0)
        if first == v:  # one value holds more than max_rows rows: a window of its own
            oversized.append(len(values))
            nxt = walk.after(v)
            if nxt is None:  # and it is the range's last value
                return Cut(values, oversized, truncated=False)
            v = nxt
        values.append(v)
        lo = v


def cut_instants(
    conn: Any,
    source: SourceTable,
    zone: str,
    values: list[datetime],
    start: datetime | None,
    end: datetime,
    *,
    table: str,
) -> list[datetime]:
    """The instant (naive UTC) naming each cut's key, strictly inside ``(start, end)`` and
    strictly increasing."""
    if source.cursor_type == "timestamptz":
        instants = list(values)
    else:
        instants = []
        for value in values:
            with source_errors("window plan", table=table):
                ((moment,),) = conn.run(
                    "SELECT (CAST(:v AS timestamp) AT TIME ZONE :zone) AT TIME ZONE 'UTC'",
                    v=value.isoformat(sep=" "),
                    zone=zone,
                )
            instants.append(_naive_utc(moment))
    n = len(instants)
    if start is not None and end - start <= _TICK * (n + 1):
        raise ValueError(f"window of {table} too short for {n + 1} sub-windows")
    out: list[datetime] = []
    for i, moment in enumerate(instants):
        low = (out[-1] if out else (start if start is not None else moment - _TICK)) + _TICK
        high = end - _TICK * (n - i)
        out.append(min(max(moment, low), high))
    return out
