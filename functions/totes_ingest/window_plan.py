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

:func:`plan_windows` makes a window's plan from these cuts, reusing the sub-windows
earlier runs staged but never committed (at the watermark and after a gap), and
:func:`within_budget` shortens a planned sub-window to what its step's time budget
extracts; ``sub_windows`` saves the plan and ``pipeline`` stages and commits it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from aws_lambda_powertools.metrics import MetricUnit

from totes_ingest import config
from totes_ingest.cursor import CursorRange, cursor_range
from totes_ingest.db_errors import source_errors
from totes_ingest.identifiers import quote_ident
from totes_ingest.lake import Lake, StagedWindow, longest_from
from totes_ingest.observability import logger, put_metric
from totes_ingest.source import CURSOR_COLUMN, SourceTable, resolve_table
from totes_ingest.window import Window

Payload = dict[str, Any]

# A sub-window's staged objects of reused windows, not committed yet, that its re-read
# overlap reaches (plan_windows): their versions count as the lake's.
REREAD_STAGED: Final = "reread_staged"
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


# -- a window's plan: sub-windows, staged ones reused -----------------------------


def plan_windows(
    payload: Mapping[str, Any],
    conn: Any,
    lake: Lake | None = None,
    *,
    max_window_rows: int,
    reread_lag_seconds: float = config.DEFAULT_REREAD_LAG_SECONDS,
    schema: str = config.DEFAULT_SOURCE_SCHEMA,
    max_windows: int | None = None,
    deadline: float | None = None,
    source: SourceTable | None = None,
) -> list[Payload]:
    """The window of ``payload`` (GetLastIngestTime's output) cut into consecutive
    sub-windows of at most ``max_window_rows`` rows each (window_plan), in chain order:
    one payload per sub-window, each with its cursor range fixed, for :func:`stage_table`.

    With ``lake``, windows staged but never committed by earlier runs that continue the
    chain are reused (``staged_by``), not extracted again: at the watermark, and after a
    gap (a sub-window whose staging failed), which is planned to end where the next
    staged window starts. The gap's first sub-window keeps the re-read overlap, told of
    the reused staged objects it reaches (``REREAD_STAGED``), but never below the cursor
    range an earlier gap of this plan covers (its rows are in no object yet, and are read
    by its own extract); the sub-windows cut from one gap start where an earlier one
    ends, and have none. ``max_windows`` and ``deadline`` (``time.monotonic()``) end the
    plan early: the rest is the next run's. ``source``: the table, if the caller resolved
    it already (else it is resolved when a gap is planned).
    """
    window = Window.from_payload(payload)
    if window.is_empty:
        return [{**payload, **window.to_payload()}]
    # An empty staged window is not reused: it saves no extract, and a plan ending in
    # one would commit an empty file (see commit_windows).
    staged = (
        []
        if lake is None
        else [s for s in lake.staged_windows(window.table, window.start, window.end) if s.rows]
    )
    subs: list[Payload] = []
    reused: list[tuple[str, datetime]] = []  # the reused staged objects, their cursor ends
    planned: datetime | None = None  # where the cursor range planned so far ends
    while True:
        found = longest_from(staged, window.start, window.cursor_start)
        if found is not None:
            # Reused windows count towards the plan's bounds too: the rest is the next run's.
            if subs and (
                (max_windows is not None and len(subs) >= max_windows)
                or (deadline is not None and time.monotonic() > deadline)
            ):
                logger.info(
                    "Reused windows fill the plan: the next run goes on",
                    extra={"table": window.table, "windows": len(subs)},
                )
                break
            sub = replace(window, end=found.end, staged_by=found.run_id).with_cursor(found.cursor)
            subs.append({**payload, **sub.to_payload()})
            reused.append((found.key, found.cursor.end))
            logger.info(
                "Reusing a staged window",
                extra={"table": window.table, "window": sub.label, "staged_by": found.run_id},
            )
            window = window.with_watermark(found.end, window.last_key, found.cursor.end)
            continue
        if window.start is not None and window.start >= window.end:
            break  # reused up to the end
        nxt = _next_staged(staged, window)
        source = source or resolve_table(conn, window.table, schema)
        gap = window if nxt is None else replace(window, end=nxt[0])
        rng = window_cursor_range(conn, source, gap, reread_lag_seconds)
        if nxt is not None:  # the gap ends where the staged window's cursor starts
            rng = CursorRange(rng.start, nxt[1], rng.reread_from)
        if planned is not None:  # no re-read of this plan's own rows: in no object yet
            rng = _reread_above(rng, planned)
        # The gap's re-read reaches into the reused windows before it: rows a writer the
        # end bound missed (or a fall-back's repeated hour) made visible since they were
        # staged. Their versions are not committed yet, so the re-read is told of their
        # staged objects too (REREAD_STAGED): it takes only what none of them holds.
        reread_staged = [
            key for key, end in reused if rng.reread_from is not None and end > rng.reread_from
        ]
        left = None if max_windows is None else max(max_windows - len(subs), 1)
        cut, truncated = cut_window(
            conn, source, gap, rng, max_window_rows, max_windows=left, deadline=deadline
        )
        items = [{**payload, **sub.to_payload()} for sub in cut]
        if reread_staged:
            items[0][REREAD_STAGED] = reread_staged
        subs += items
        planned = cut[-1].cursor.end if cut[-1].cursor is not None else planned
        if truncated or nxt is None:
            break
        window = window.with_watermark(nxt[0], window.last_key, nxt[1])
    logger.info("Planned windows", extra={"table": window.table, "windows": len(subs)})
    return subs


def _reread_above(rng: CursorRange, low: datetime) -> CursorRange:
    """``rng`` with its re-read overlap starting no lower than ``low``."""
    if rng.reread_from is None or rng.start is None:
        return rng
    reread = max(rng.reread_from, low)
    return CursorRange(rng.start, rng.end, reread if reread < rng.start else None)


def within_budget(
    conn: Any,
    source: SourceTable,
    window: Window,
    rng: CursorRange,
    deadline: float,
    rows_per_second: float,
) -> Window:
    """``window`` (a planned sub-window, its cursor range ``rng``), or its first part if
    the rest would not be extracted by ``deadline`` at ``rows_per_second``: cut at a
    cursor value (one value at least, never split), as the plan cuts (WARNING)."""
    fit = max(int((deadline - time.monotonic()) * rows_per_second), 1)
    try:
        head, truncated = cut_window(conn, source, window, rng, fit, max_windows=1, deadline=None)
    except ValueError:  # a window too short (in microseconds) to cut: staged whole
        return window
    if not truncated:
        return window
    logger.warning(
        "Sub-window handed on at its time budget: staged shorter, the rest is the next run's",
        extra={"table": window.table, "window": window.label, "staged": head[0].label},
    )
    return head[0]


def _next_staged(staged: list[StagedWindow], window: Window) -> tuple[datetime, datetime] | None:
    """Where the first staged window after ``window``'s start begins: (instant, cursor)."""
    starts = [
        (s.start, s.cursor.start)
        for s in staged
        if s.start is not None
        and s.cursor.start is not None
        and (window.start is None or s.start > window.start)
        and (window.cursor_start is None or s.cursor.start > window.cursor_start)
    ]
    return min(starts, default=None)


def cut_window(
    conn: Any,
    source: SourceTable,
    window: Window,
    rng: CursorRange,
    max_window_rows: int,
    *,
    max_windows: int | None,
    deadline: float | None,
) -> tuple[list[Window], bool]:
    """``window`` (its cursor range ``rng``) cut into sub-windows; whether the cut stopped
    early (then the last sub-window ends at its last cut, not at ``window.end``)."""
    table = window.table
    cut = cut_points(
        conn,
        source,
        rng,
        max_window_rows,
        table=table,
        max_windows=max_windows,
        deadline=deadline,
    )
    instants = cut_instants(
        conn, source, window.source_timezone, cut.values, window.start, window.end, table=table
    )
    ends = [*instants] if cut.truncated else [*instants, window.end]
    cursor_ends = [*cut.values] if cut.truncated else [*cut.values, rng.end]
    subs: list[Window] = []
    start, cursor_start = window.start, rng.start
    for i, (end, cursor_end) in enumerate(zip(ends, cursor_ends, strict=True)):
        reread = rng.reread_from if i == 0 else None
        sub = window.with_watermark(start, window.last_key, cursor_start)
        subs.append(
            replace(sub, end=end).with_cursor(CursorRange(cursor_start, cursor_end, reread))
        )
        start, cursor_start = end, cursor_end
    for i in cut.oversized:
        logger.warning(
            "A window above MAX_WINDOW_ROWS: one cursor value holds more rows",
            extra={"table": table, "window": subs[i].label, "max": max_window_rows},
        )
        put_metric("OversizedWindowRows", MetricUnit.Count, 1, table)
    return subs, cut.truncated


def window_cursor_range(
    conn: Any, source: SourceTable, window: Window, reread_lag_seconds: float
) -> CursorRange:
    """The cursor values of ``window`` in the source's semantics, re-read overlap included."""
    return cursor_range(
        conn,
        source,
        window.source_timezone,
        window.start,
        window.end,
        window.cursor_start,
        timedelta(seconds=reread_lag_seconds),
    )
