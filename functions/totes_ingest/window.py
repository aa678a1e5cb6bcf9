"""One table's window in one run, as a value: parsed once from a step's payload.

Payloads are JSON and travel through the state machine; every step turns its payload
into a :class:`Window` here, so the table name, the instants and the cursor range are
checked once, and every log line and error labels the window the same way.

``start`` and ``end`` are instants, naive UTC (the lake's keys are in UTC); ``start`` is
the table's watermark (None: its first window) and ``end`` the run's end bound. The
cursor range (see ``cursor``) is what the extract reads, fixed by QueryToParquet and
recorded by the commit in the window's claim.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from totes_ingest.cursor import CursorRange
from totes_ingest.errors import InvalidEvent
from totes_ingest.format_time import format_time, parse_time
from totes_ingest.generate_file_key import is_valid_run_id
from totes_ingest.generate_new_entry_query import validated_time
from totes_ingest.identifiers import is_valid_table_name

Payload = dict[str, Any]


@dataclass(frozen=True)
class Window:
    table: str
    run_id: str
    end: datetime
    source_timezone: str = "UTC"
    start: datetime | None = None
    last_key: str | None = None
    cursor_start: datetime | None = None  # the previous window's cursor end
    cursor: CursorRange | None = None
    hold: str | None = None  # why this run may not pass the watermark
    execution: str | None = None
    # The run whose staged object this window commits when it is not this run's own: a
    # sub-window staged by an earlier run and reused (window_plan, lake.staged_window).
    staged_by: str | None = None

    @property
    def staging_run(self) -> str:
        """The run id in the window's staging key and claim."""
        return self.staged_by or self.run_id

    @property
    def label(self) -> str:
        start = "beginning" if self.start is None else format_time(self.start)
        return f"[{start}, {format_time(self.end)})"

    @property
    def is_empty(self) -> bool:
        """The watermark is already at or past this run's end, or held there."""
        return self.hold is not None or (self.start is not None and self.start >= self.end)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Window:
        """The window of a step payload; InvalidEvent if it is malformed."""
        missing = [key for key in ("table", "end_time", "run_id") if key not in payload]
        if missing:
            raise InvalidEvent(f"step input lacks {', '.join(missing)}")
        table = payload["table"]
        if not is_valid_table_name(table):
            raise InvalidEvent(f"not a valid table name: {str(table)[:40]!r}")
        run_id = payload["run_id"]
        if not isinstance(run_id, str) or not run_id:
            raise InvalidEvent("step input has no run_id", table=table)
        zone = payload.get("source_timezone", "UTC")
        if not isinstance(zone, str) or not zone or len(zone) > 100:
            raise InvalidEvent("step input has no valid source_timezone", table=table)
        cursor = payload.get("cursor")
        staged_by = _optional_str(payload.get("staged_by"), "staged_by", table)
        if staged_by is not None and not is_valid_run_id(staged_by):
            raise InvalidEvent("step input's staged_by is not a run id", table=table)
        return cls(
            table=table,
            run_id=run_id,
            end=_time(payload["end_time"], table),
            source_timezone=zone,
            start=_optional_time(payload.get("start_time"), table),
            last_key=_optional_str(payload.get("last_key"), "last_key", table),
            cursor_start=_optional_time(payload.get("cursor_start"), table),
            cursor=None if cursor is None else _cursor(cursor, table),
            hold=_optional_str(payload.get("hold"), "hold", table),
            execution=_optional_str(payload.get("execution"), "execution", table),
            staged_by=staged_by,
        )

    def with_watermark(
        self, start: datetime | None, last_key: str | None, cursor_start: datetime | None
    ) -> Window:
        return replace(self, start=start, last_key=last_key, cursor_start=cursor_start)

    def with_cursor(self, cursor: CursorRange) -> Window:
        return replace(self, cursor=cursor)

    def to_payload(self) -> Payload:
        """The fields of the window, for the next step's payload."""
        payload: Payload = {
            "table": self.table,
            "run_id": self.run_id,
            "end_time": format_time(self.end),
            "source_timezone": self.source_timezone,
            "start_time": None if self.start is None else format_time(self.start),
            "last_key": self.last_key,
            "cursor_start": None if self.cursor_start is None else format_time(self.cursor_start),
            "hold": self.hold,
        }
        if self.cursor is not None:
            payload["cursor"] = self.cursor.to_payload()
        if self.execution is not None:
            payload["execution"] = self.execution
        if self.staged_by is not None:
            payload["staged_by"] = self.staged_by
        return payload


def _time(value: object, table: str) -> datetime:
    return parse_time(validated_time(value, table=table))


def _optional_time(value: object, table: str) -> datetime | None:
    return None if value is None else _time(value, table)


def _optional_str(value: object, name: str, table: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidEvent(f"step input's {name} is not a string", table=table)


def _cursor(value: object, table: str) -> CursorRange:
    try:
        return CursorRange.from_payload(value)
    except ValueError as e:
        raise InvalidEvent(f"step input's cursor is malformed: {e}", table=table) from e
