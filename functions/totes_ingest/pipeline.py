"""The steps of an ingest run, as plain functions over explicit clients.

Each function takes a step's input payload (see docs/CONTRACTS.md) and returns its output
payload; the Lambda handlers only build clients around them. No row data ever travels in
a payload: rows go from the database to a staged Parquet object, and only keys and counts
move between steps.
"""

from __future__ import annotations

import hashlib
import tempfile
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from totes_ingest.errors import InvalidEvent
from totes_ingest.extract import extract_to_parquet
from totes_ingest.format_time import format_time, parse_time
from totes_ingest.generate_new_entry_query import validated_time
from totes_ingest.identifiers import is_valid_table_name
from totes_ingest.lake import Lake, staging_key
from totes_ingest.observability import logger, put_metric
from totes_ingest.validation import require_keys, validate_event
from totes_ingest.window import commit_safe_end_time
from totes_ingest.write_to_s3 import write_to_s3

if TYPE_CHECKING:
    import pyarrow as pa

Payload = dict[str, Any]

COLUMNS_METADATA = "columns"
_MAX_SIGNATURE_BYTES = 1800


def _window(start: str | None, end: str) -> str:
    return f"[{start or 'beginning'}, {end})"


def _table_item(payload: Mapping[str, Any], *keys: str) -> tuple[str, datetime]:
    """The validated table and end time of a per-table payload."""
    require_keys(payload, "table", "end_time", "run_id", *keys)
    table = payload["table"]
    if not is_valid_table_name(table):
        raise InvalidEvent(f"not a valid table name: {str(table)[:40]!r}")
    return table, parse_time(validated_time(payload["end_time"], table=table))


def _start(payload: Mapping[str, Any], table: str) -> datetime | None:
    start = payload.get("start_time")
    return None if start is None else parse_time(validated_time(start, table=table))


def start_run(
    event: object,
    conn: Any,
    *,
    fallback_lag_seconds: float,
    max_concurrency: int,
    safety_margin_seconds: float = 1.0,
) -> Payload:
    """Validate the execution input and fix the run's end time from the database clock."""
    tables = validate_event(event, conn)
    bound = commit_safe_end_time(conn, fallback_lag_seconds, safety_margin_seconds)
    end_time = format_time(bound.end_time)
    run_id = f"run-{uuid.uuid4().hex}"
    logger.info(
        "Run started",
        extra={
            "run_id": run_id,
            "end_time": end_time,
            "tables": tables,
            "database_clock": format_time(bound.clock),
            "held_back_by_open_transaction": bound.held_back_by_open_transaction,
            "fallback_lag_used": bound.fallback_lag_used,
        },
    )
    return {
        "run_id": run_id,
        "end_time": end_time,
        "tables": tables,
        "max_concurrency": max_concurrency,
    }


def find_watermark(payload: Mapping[str, Any], lake: Lake) -> Payload:
    """The start of this table's window: the end of its last committed window."""
    table, _ = _table_item(payload)
    watermark, last_key = lake.resolve_watermark(table)
    start_time = None if watermark is None else format_time(watermark)
    logger.info(
        "Found last ingest time",
        extra={"table": table, "start_time": start_time, "last_key": last_key},
    )
    return {**payload, "start_time": start_time, "last_key": last_key}


def stage_table(
    payload: Mapping[str, Any], conn: Any, lake: Lake, *, row_group_rows: int
) -> Payload:
    """Extract the window's rows to Parquet and upload it to the table's staging key."""
    table, end = _table_item(payload, "start_time")
    start = _start(payload, table)
    window = _window(payload["start_time"], payload["end_time"])
    if start is not None and start >= end:
        # Another run already moved the watermark past this run's end: nothing to do.
        logger.warning(
            "Watermark is already past this run's end time",
            extra={"table": table, "window": window},
        )
        return {**payload, "rows": 0, "bytes": 0, "staging_key": None}
    with tempfile.TemporaryDirectory(prefix="totes-") as workdir:
        path = Path(workdir) / f"{table}.parquet"
        result = extract_to_parquet(
            conn,
            table,
            payload["start_time"],
            payload["end_time"],
            path,
            row_group_rows=row_group_rows,
        )
        if result.rows == 0:
            logger.warning("No new rows", extra={"table": table, "window": window})
            return {**payload, "rows": 0, "bytes": 0, "staging_key": None}
        columns = schema_signature(result.schema)
        _log_schema_change(lake, table, payload.get("last_key"), columns)
        key = staging_key(table, start, end)
        with path.open("rb") as parquet:
            write_to_s3(lake.s3, lake.bucket, key, parquet, metadata={COLUMNS_METADATA: columns})
    logger.info(
        "Staged parquet",
        extra={
            "table": table,
            "window": window,
            "rows": result.rows,
            "bytes": result.bytes,
            "staging_key": key,
        },
    )
    return {**payload, "rows": result.rows, "bytes": result.bytes, "staging_key": key}


def schema_signature(schema: pa.Schema) -> str:
    """``name type, ...`` of a file's columns, kept in its S3 metadata (2 KB at most)."""
    signature = ", ".join(f"{field.name} {field.type}" for field in schema)
    if len(signature.encode()) > _MAX_SIGNATURE_BYTES:
        signature = "sha256:" + hashlib.sha256(signature.encode()).hexdigest()
    return signature


def _log_schema_change(lake: Lake, table: str, last_key: object, columns: str) -> None:
    """WARNING when this window's columns differ from those of the table's previous file."""
    if not isinstance(last_key, str):
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


def commit_table(payload: Mapping[str, Any], lake: Lake) -> Payload:
    """Publish the staged window as the table's next key (exactly once)."""
    table, end = _table_item(payload, "start_time", "rows")
    start = _start(payload, table)
    rows = int(payload["rows"])
    result = lake.commit(table, start, end, payload["run_id"], rows)
    window = _window(payload["start_time"], payload["end_time"])
    if result.status == "written":
        logger.info(
            "Wrote parquet",
            extra={"table": table, "window": window, "rows": rows, "key": result.key},
        )
        put_metric("RowsIngested", MetricUnit.Count, rows, table)
        put_metric("BytesWritten", MetricUnit.Bytes, int(payload.get("bytes", 0)), table)
        # Assumes the database clock is UTC (as RDS's is by default).
        lag = datetime.now(UTC).replace(tzinfo=None) - end
        put_metric("FreshnessSeconds", MetricUnit.Seconds, max(lag.total_seconds(), 0.0), table)
    else:
        logger.warning(
            "Skipped commit", extra={"table": table, "window": window, "reason": result.reason}
        )
    return {
        "table": table,
        "status": result.status,
        "key": result.key,
        "rows": rows,
        "reason": result.reason,
    }
