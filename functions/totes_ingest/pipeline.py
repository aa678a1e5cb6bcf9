"""The steps of an ingest run, as plain functions over explicit clients.

Each function takes a step's input payload (see docs/CONTRACTS.md) and returns its output
payload; the Lambda handlers only build clients around them. Each per-table payload is
parsed once into a :class:`~totes_ingest.window.Window`. No row data ever travels in a
payload: rows go from the database to a staged Parquet object, and only keys and counts
move between steps.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from totes_ingest import config
from totes_ingest.cursor import CursorRange
from totes_ingest.db_errors import source_errors
from totes_ingest.end_bound import EndBound, commit_safe_end_time
from totes_ingest.errors import InvalidEvent, LakeError, SourceError, UnsupportedColumnType
from totes_ingest.format_time import format_time
from totes_ingest.generate_file_key import claim_key, staging_key
from totes_ingest.lake import Lake, staged_metadata
from totes_ingest.observability import logger, put_metric
from totes_ingest.run_summary import aggregate as aggregate  # the step, re-exported
from totes_ingest.source import SourceTable, largest_first, refuse_replicated, resolve_table
from totes_ingest.sub_windows import PLAN_INDEX, footer_schema, load_plan, save_plan
from totes_ingest.validation import validate_event
from totes_ingest.window import Window
from totes_ingest.window_plan import (
    REREAD_STAGED,
    plan_windows,
    window_cursor_range,
    within_budget,
)
from totes_ingest.write_to_s3 import write_to_s3

if TYPE_CHECKING:
    import pyarrow as pa

    from totes_ingest.glue_catalog import GlueCatalog

Payload = dict[str, Any]

COLUMNS_METADATA = "columns"
# The most sub-windows one run plans for a table (the rest is the next run's): the
# Distributed Map's results, an index each, stay far below 256 KB.
MAX_PLAN_WINDOWS = 10_000
_MAX_SIGNATURE_BYTES = 1700  # S3 user metadata: 2 KB in all (lake.staged_metadata)


@dataclass(frozen=True)
class RunSettings:
    """How a run bounds its windows (see config for each setting)."""

    fallback_lag_seconds: float
    max_concurrency: int
    safety_margin_seconds: float = 1.0
    schema: str = "public"
    source_timezone: str | None = None  # None: the database's TimeZone
    allow_hot_standby: bool = False
    stall_warning_seconds: float = 60.0

    @classmethod
    def from_environment(cls, *, max_concurrency: int | None = None) -> RunSettings:
        return cls(
            fallback_lag_seconds=config.fallback_lag_seconds(),
            max_concurrency=config.max_concurrency()
            if max_concurrency is None
            else max_concurrency,
            safety_margin_seconds=config.safety_margin_seconds(),
            schema=config.source_schema(),
            source_timezone=config.source_timezone(),
            allow_hot_standby=config.allow_hot_standby(),
            stall_warning_seconds=config.stall_warning_seconds(),
        )


@dataclass(frozen=True)
class StageSettings:
    """How QueryToParquet extracts a window (see config for each setting)."""

    row_group_rows: int = config.DEFAULT_ROW_GROUP_ROWS
    reread_lag_seconds: float = config.DEFAULT_REREAD_LAG_SECONDS
    schema: str = config.DEFAULT_SOURCE_SCHEMA
    type_profile: config.TypeProfile = config.DEFAULT_TYPE_PROFILE
    max_window_rows: int = config.DEFAULT_MAX_WINDOW_ROWS
    stage_concurrency: int = config.DEFAULT_STAGE_CONCURRENCY
    extract_connections: int = config.DEFAULT_EXTRACT_CONNECTIONS
    rows_per_second: float = config.DEFAULT_EXTRACT_ROWS_PER_SECOND

    @classmethod
    def from_environment(cls) -> StageSettings:
        return cls(
            row_group_rows=config.row_group_rows(),
            reread_lag_seconds=config.reread_lag_seconds(),
            schema=config.source_schema(),
            type_profile=config.type_profile(),
            max_window_rows=config.max_window_rows(),
            stage_concurrency=config.stage_concurrency(),
            extract_connections=config.extract_connections(),
            rows_per_second=config.extract_rows_per_second(),
        )


def start_run(event: object, conn: Any, settings: RunSettings) -> Payload:
    """Validate the execution input and fix the run's end bound from the database."""
    zone = settings.source_timezone or _database_zone(conn)
    _check_zone(conn, zone)
    resolved = validate_event(event, conn, settings.schema, zone)
    refuse_replicated(conn, resolved)
    tables = [t.name for t in largest_first(conn, resolved)]
    bound = commit_safe_end_time(
        conn,
        settings.fallback_lag_seconds,
        settings.safety_margin_seconds,
        allow_hot_standby=settings.allow_hot_standby,
    )
    run_id = f"run-{uuid.uuid4().hex}"
    end_time = format_time(bound.end_time)
    logger.info(
        "Run started",
        extra={
            "run_id": run_id,
            "end_time": end_time,
            "tables": tables,
            "database_clock": format_time(bound.clock),
            "source_timezone": zone,
            "held_back_by_open_transaction": bound.held_back_by_open_transaction,
            "fallback_lag_used": bound.fallback_lag_used,
        },
    )
    _report_stalls(bound, settings.stall_warning_seconds)
    put_metric("EndBoundLagSeconds", MetricUnit.Seconds, bound.lag_seconds, None)
    return {
        "run_id": run_id,
        "end_time": end_time,
        "tables": tables,
        "max_concurrency": settings.max_concurrency,
        "source_timezone": zone,
        "hold": bound.hold_at_watermark,
    }


def _database_zone(conn: Any) -> str:
    with source_errors("time zone lookup"):
        ((zone,),) = conn.run("SELECT current_setting('TimeZone')")
    return str(zone)


def _check_zone(conn: Any, zone: str) -> None:
    """A zone PostgreSQL does not know fails the run at once, naming the setting."""
    try:
        with source_errors("time zone lookup"):
            conn.run("SELECT now() AT TIME ZONE :zone", zone=zone)
    except SourceError as e:
        raise InvalidEvent(f"{config.SOURCE_TIMEZONE} {zone[:100]!r} is not a zone: {e}") from e


def _report_stalls(bound: EndBound, threshold_seconds: float) -> None:
    """WARNING for whatever holds the bound back: never a session's query text."""
    blocker = bound.held_back_by
    if blocker is not None and bound.lag_seconds > threshold_seconds:
        logger.warning(
            "End bound held back by an open transaction",
            extra={"lag_seconds": round(bound.lag_seconds, 3), **blocker.describe(bound.clock)},
        )
    if bound.invisible:
        logger.warning(
            "Open transactions whose start is not visible: the bound trails by the fallback lag",
            extra={"sessions": [t.describe(bound.clock) for t in bound.invisible[:10]]},
        )
    if bound.hold_at_watermark:
        logger.warning(
            "Every table held at its watermark",
            extra={"reason": bound.hold_at_watermark, "prepared": len(bound.prepared)},
        )


def find_watermark(payload: Mapping[str, Any], lake: Lake) -> Payload:
    """The start of this table's window: the end of its last committed window."""
    window = Window.from_payload(payload)
    mark = lake.resolve_watermark(window.table)
    window = window.with_watermark(mark.end, mark.key, mark.cursor_end)
    logger.info(
        "Found last ingest time",
        extra={
            "table": window.table,
            "start_time": window.to_payload()["start_time"],
            "last_key": mark.key,
        },
    )
    return {**payload, **window.to_payload()}


def stage_table(
    payload: Mapping[str, Any],
    conn: Any,
    lake: Lake,
    *,
    row_group_rows: int,
    reread_lag_seconds: float = config.DEFAULT_REREAD_LAG_SECONDS,
    schema: str = config.DEFAULT_SOURCE_SCHEMA,
    type_profile: config.TypeProfile = config.DEFAULT_TYPE_PROFILE,
    max_window_rows: int = config.DEFAULT_MAX_WINDOW_ROWS,
    stage_concurrency: int = config.DEFAULT_STAGE_CONCURRENCY,
    extract_connections: int = config.DEFAULT_EXTRACT_CONNECTIONS,
    connect: Callable[[], Any] | None = None,
    rows_per_second: float = config.DEFAULT_EXTRACT_ROWS_PER_SECOND,
    deadline: float | None = None,
) -> Payload:
    """Extract the window's rows to Parquet and upload it to the run's staging key.

    A window not yet planned (GetLastIngestTime's output) is planned first
    (``window_plan.plan_windows``): cut into more than one sub-window, it is not extracted here but
    saved as a plan for the Distributed Map (``sub_windows``), and the output says so
    (``windows`` > 1). A sub-window of a plan is staged even when it holds no rows, so
    that the plan's chain stays whole. ``deadline`` (``time.monotonic()``) bounds the
    planning, and a sub-window: one holding more rows than ``rows_per_second`` extracts by
    then is staged shorter, ending at a cursor value (``window_plan.within_budget``), and the rest
    is handed on (CommitWindows commits the shorter one and stops the chain there; the
    next run plans the rest, reusing the staged sub-windows after it). Handlers pass
    ``**vars(StageSettings.from_environment())``; ``connect`` opens the extract's extra
    connections when ``extract_connections`` > 1 (without it, one).
    """
    window = Window.from_payload(payload)
    table = window.table
    source: SourceTable | None = None
    if not window.is_empty and window.cursor is None and window.staged_by is None:
        source = resolve_table(conn, table, schema)
        subs = plan_windows(
            payload,
            conn,
            lake,
            max_window_rows=max_window_rows,
            reread_lag_seconds=reread_lag_seconds,
            schema=schema,
            max_windows=MAX_PLAN_WINDOWS,
            deadline=deadline,
            source=source,
        )
        if len(subs) > 1:
            plan = save_plan(lake, payload, subs, source.key)
            return {**plan, "stage_concurrency": stage_concurrency}
        payload = subs[0]
        window = Window.from_payload(payload)
    empty = {**payload, "rows": 0, "bytes": 0, "staging_key": None, "windows": 1}
    if window.is_empty:
        reason = window.hold or "another run already moved the watermark past this run's end"
        logger.warning(
            "Window held at the watermark",
            extra={"table": table, "window": window.label, "reason": reason},
        )
        _freshness(table, window.start)
        return empty
    if window.staged_by is not None:  # staged by an earlier run: verified, not re-read
        # Claimed already (an overlapping run reusing it committed it since it was found,
        # its staged object now gone): CommitTable's claim settles it, as in a plan.
        claimed = lake.read_claim(claim_key(table, window.start), table=table)
        staged_rows = claimed.rows if claimed is not None else lake.verify_staged(window).rows
        key = staging_key(table, window.start, window.end, window.staging_run)
        # The reused window's own payload (its end, cursor, staged_by), not the run's.
        return {**payload, "rows": staged_rows, "bytes": 0, "staging_key": key, "windows": 1}
    source = source or resolve_table(conn, table, schema)
    # A sub-window of a plan (plan_windows) comes with its cursor range fixed.
    if PLAN_INDEX in payload and deadline is not None and window.cursor is not None:
        window = within_budget(conn, source, window, window.cursor, deadline, rows_per_second)
    rng = window.cursor or window_cursor_range(conn, source, window, reread_lag_seconds)
    if not source.key and rng.reread_from is not None:
        logger.warning("No key: no re-read overlap", extra={"table": table})
        rng = CursorRange(rng.start, rng.end)
    window = window.with_cursor(rng)
    in_lake: Callable[[], Any] | None = None
    if rng.reread_from is not None and rng.start is not None:
        from totes_ingest.reread import lake_versions  # here: it imports pyarrow

        staged_too = payload.get(REREAD_STAGED) or []
        if not isinstance(staged_too, list) or not all(
            isinstance(key, str) and key.startswith(f"{config.STAGING_PREFIX}{table}/")
            for key in staged_too
        ):
            raise InvalidEvent(f"step input's {REREAD_STAGED} is malformed", table=table)
        # Read by the extract only if the re-read range holds rows.
        in_lake = functools.partial(
            lake_versions, lake, source, rng.reread_from, rng.start, staged=staged_too
        )
    from totes_ingest.extract import extract_window  # here: it imports pg8000

    with tempfile.TemporaryDirectory(prefix="totes-") as workdir:
        path = Path(workdir) / f"{table}.parquet"
        result = extract_window(
            conn,
            window,
            source,
            path,
            row_group_rows=row_group_rows,
            in_lake=in_lake,
            type_profile=type_profile,
            connections=extract_connections,
            connect=connect,
        )
        in_plan = PLAN_INDEX in payload  # its chain needs it, empty or not
        if result.rows == 0 and not in_plan:
            logger.warning("No new rows", extra={"table": table, "window": window.label})
            _freshness(table, window.end)
            return empty
        columns = schema_signature(result.schema)
        _log_schema_change(lake, table, window.last_key, columns)
        catalog = catalog_columns(table, result.schema, source.key)
        key = staging_key(table, window.start, window.end, window.run_id)
        metadata = {COLUMNS_METADATA: columns, **staged_metadata(window, result.rows)}
        with path.open("rb") as parquet:
            write_to_s3(lake.s3, lake.bucket, key, parquet, metadata=metadata)
    logger.info(
        "Staged parquet",
        extra={
            "table": table,
            "window": window.label,
            "cursor": rng.to_payload(),
            "rows": result.rows,
            "reread_rows": result.reread,
            "bytes": result.bytes,
            "staging_key": key,
        },
    )
    return {
        **payload,
        **window.to_payload(),
        "rows": result.rows,
        "bytes": result.bytes,
        "staging_key": key,
        "catalog": catalog,
        "windows": 1,
    }


def catalog_columns(table: str, schema: pa.Schema, key: tuple[str, ...]) -> Payload | None:
    """What CommitTable declares in Glue: each column's Glue type, the key, the cursor
    (None, with a WARNING, if a column cannot be declared: the extension profile)."""
    from totes_ingest.pg_types import glue_type  # here: it imports pyarrow
    from totes_ingest.source import CURSOR_COLUMN

    try:
        columns = [[field.name, glue_type(field.type)] for field in schema]
    except UnsupportedColumnType as e:
        logger.warning("Not cataloged in Glue", extra={"table": table, "reason": str(e)})
        return None
    return {"columns": columns, "key": list(key), "cursor": CURSOR_COLUMN}


def _handed_on(lake: Lake, window: Window) -> Payload | None:
    """The shorter window a StageWindow child staged for ``window`` at its time budget
    (same start, same run), as CommitTable's input fields; None if there is none."""
    if window.cursor is None:
        return None
    found = lake.staged_window(window.table, window.start, window.cursor.start, window.end)
    if found is None or found.run_id != window.staging_run or found.end >= window.end:
        return None
    shorter = replace(window, end=found.end).with_cursor(found.cursor)
    return {**shorter.to_payload(), "rows": found.rows, "bytes": 0}


def _freshness(table: str, complete_until: datetime | None) -> None:
    """``FreshnessSeconds``: how long ago the instant up to which the lake is complete."""
    if complete_until is None:
        return
    lag = datetime.now(UTC).replace(tzinfo=None) - complete_until
    put_metric("FreshnessSeconds", MetricUnit.Seconds, max(lag.total_seconds(), 0.0), table)


def schema_signature(schema: pa.Schema) -> str:
    """``name type, ...`` of a file's columns, kept in its S3 metadata (2 KB at most)."""
    signature = ", ".join(f"{field.name} {field.type}" for field in schema)
    if len(signature.encode()) > _MAX_SIGNATURE_BYTES:
        signature = "sha256:" + hashlib.sha256(signature.encode()).hexdigest()
    return signature


def _log_schema_change(lake: Lake, table: str, last_key: str | None, columns: str) -> None:
    """WARNING when this window's columns differ from those of the table's previous file."""
    if last_key is None:
        return
    previous = lake.metadata(last_key, table=table).get(COLUMNS_METADATA)
    if previous is None or previous == columns:
        return
    before, after = set(previous.split(", ")), set(columns.split(", "))
    logger.warning(
        "Schema changed since the previous file",
        extra={
            "table": table,
            "previous_key": last_key,
            "added": sorted(after - before),
            "removed": sorted(before - after),
        },
    )


def commit_table(
    payload: Mapping[str, Any], lake: Lake, catalog: GlueCatalog | None = None
) -> Payload:
    """Publish the staged window as the table's next key (exactly once), then keep the
    table's Glue catalog (``catalog``; None: none is kept) in step with its columns."""
    window = Window.from_payload(payload)
    if window.cursor is None or "rows" not in payload:
        raise InvalidEvent(
            "step input lacks the staged window's cursor and rows", table=window.table
        )
    rows = int(payload["rows"])
    result = lake.commit(window, rows)
    if result.status == "written":
        logger.info(
            "Wrote parquet",
            extra={"table": window.table, "window": window.label, "rows": rows, "key": result.key},
        )
        put_metric("RowsIngested", MetricUnit.Count, rows, window.table)
        put_metric("BytesWritten", MetricUnit.Bytes, int(payload.get("bytes", 0)), window.table)
        _freshness(window.table, window.end)
        if catalog is not None and payload.get("catalog"):
            sync_catalog(catalog, lake, window, payload["catalog"])
    else:
        logger.warning(
            "Skipped commit",
            extra={"table": window.table, "window": window.label, "reason": result.reason},
        )
    return {
        "table": window.table,
        "status": result.status,
        "key": result.key,
        "rows": rows,
        "reason": result.reason,
    }


def sync_catalog(catalog: GlueCatalog, lake: Lake, window: Window, spec: Any) -> None:
    """The Glue tables of ``window.table`` from the columns QueryToParquet read."""
    from totes_ingest.lake_views import table_columns_of

    try:
        columns = table_columns_of(window.table, spec["columns"], spec["key"], spec["cursor"])
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidEvent("step input's catalog is malformed", table=window.table) from e

    def first_day() -> datetime:
        initial = lake.read_claim(claim_key(window.table, None), table=window.table)
        return window.end if initial is None else initial.end

    catalog.sync(columns, first_day)


def commit_windows(
    payload: Mapping[str, Any],
    lake: Lake,
    catalog: GlueCatalog | None = None,
    *,
    deadline: float | None = None,
) -> Payload:
    """CommitWindows: commit the plan's staged sub-windows in chain order, from
    ``payload["committed"]`` on (see ``sub_windows``): the table's result, as
    :func:`commit_table`'s, or ``status: "partial"`` when ``deadline`` (``time.monotonic()``)
    came first, for the next call to go on from."""
    items = load_plan(lake, payload)
    table = items[0]["table"]
    first = payload.get("committed", 0)
    if not isinstance(first, int) or not 0 <= first < len(items):
        raise InvalidEvent("step input's committed is not an index of its plan", table=table)
    rows = int(payload.get("rows_committed", 0))
    # What an earlier call of this plan (status partial) wrote last, if it wrote.
    carried = payload.get("key") if payload.get("status") == "partial" else None
    if carried is not None and not isinstance(carried, str):
        raise InvalidEvent("step input's key is not a file key", table=table)
    status = "empty" if carried is None else "written"
    result: Payload = {"table": table, "status": status, "key": carried, "rows": 0, "reason": None}
    for i in range(first, len(items)):
        if deadline is not None and i > first and time.monotonic() > deadline:
            logger.info(
                "Time budget reached: the next call commits the rest",
                extra={"table": table, "committed": i, "windows": len(items)},
            )
            return {
                **payload,
                "status": "partial",
                "committed": i,
                "rows_committed": rows,
                "key": result["key"],
            }
        window = Window.from_payload(items[i])
        # Already claimed: by this very window (a retried call, or an overlapping run
        # reusing the same staged window committed it, its staged object now gone) or
        # by another (the commit is skipped). Either way the claim, not the staged
        # object, settles it.
        claimed = lake.read_claim(claim_key(table, window.start), table=table)
        if claimed is not None:
            rows_in, size = claimed.rows, 0
        else:
            try:
                staged = lake.verify_staged(window)
            except LakeError as e:
                shorter = _handed_on(lake, window)
                if shorter is None:
                    raise LakeError(
                        f"sub-window {i + 1} of {len(items)} was not staged (see the "
                        f"StageWindows map run): {i} committed, the next run resumes there",
                        table=table,
                        window=window.label,
                    ) from e
                # Staged shorter at its time budget: committed, and the chain stops here.
                result = commit_table({**items[i], **shorter}, lake)
                logger.warning(
                    "A sub-window was handed on at its time budget: the next run goes on",
                    extra={"table": table, "window": window.label, "key": result["key"]},
                )
                return {**result, "rows": rows + int(result["rows"])}
            rows_in, size = staged.rows, staged.size
            if rows_in == 0 and i == len(items) - 1:
                # Nothing new after the sub-windows before it (the rest of the window after
                # reused ones, or emptied since planning): not committed, as a window
                # without new rows commits nothing. The next run starts where they end.
                logger.info("No new rows", extra={"table": table, "window": window.label})
                break
        result = commit_table({**items[i], "rows": rows_in, "bytes": size}, lake)
        if result["status"] != "written":  # another run holds the chain from here
            return {**result, "rows": rows}
        rows += rows_in
    key_columns = payload.get("key_columns")
    if catalog is not None and result["key"] is not None and isinstance(key_columns, list):
        spec = catalog_columns(table, footer_schema(lake, result["key"], table), tuple(key_columns))
        if spec is not None:
            sync_catalog(catalog, lake, Window.from_payload(items[-1]), spec)
    # The plan stays (the staging lifecycle rule expires it): a retry of this call after
    # it succeeded (a lost response) reads it again and finds every claim its own.
    logger.info(
        "Committed sub-windows",
        extra={"table": table, "windows": len(items) - first, "rows": rows, "key": result["key"]},
    )
    return {**result, "rows": rows}
