"""What happened during a chaos run, and what the lake holds afterwards.

:class:`TaskTally` counts the Lambda invocations (from the runner's ``on_task`` hook),
:class:`LogTally` the pipeline's own log lines, and :func:`audit_lake` compares the lake
with the database:

- *lost*: rows whose newest lake version differs from the database row, or is missing
  (``tests.lakecheck.mismatches``);
- *duplicated*: ``(primary key, last_updated)`` pairs present more than once
  (``tests.lakecheck.duplicated_versions``);
- *misplaced*: a row version in a file whose claim's cursor range (its re-read range
  included) does not hold its ``last_updated``;
- *chain breaks*: a committed file without the claim for its window's start naming it;
- *staged leftovers*: ``_staging/`` objects of committed windows (the commit deletes
  them); those whose deletion the chaos refused, or that were uploaded again after the
  commit deleted them (by a ghost, or an overlapping execution with the same window that
  failed before its own commit), are reported apart.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.conftest import BUCKET
from tests.lakecheck import duplicated_versions, lake_keys, mismatches, read_file, table_files
from totes_ingest.config import CLAIMS_PREFIX, STAGING_PREFIX
from totes_ingest.cursor import CursorRange
from totes_ingest.generate_file_key import claim_key, parse_file_key
from totes_ingest.lake import Claim
from totes_ingest.local.runner import TaskReport


class TaskTally:
    """Counts of the Lambda invocations of every execution (called from moto's threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.invocations: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        # Failures that are not an injected error itself: the pipeline's own reaction to
        # a fault (a lost connection, a vanished staged object...), by normalized message.
        self.collateral: Counter[str] = Counter()
        self.written = 0
        self.rows_written = 0
        self.skipped = 0  # lost the claim to an overlapping execution
        self.overtaken = 0  # the watermark had already passed this run's end
        self.plans = 0  # windows cut into sub-windows (QueryToParquet saved a plan)
        self.sub_windows = 0  # in those plans
        self.partial = 0  # CommitWindows calls that handed over at their time budget
        self.last_end_time: str | None = None

    def __call__(self, report: TaskReport) -> None:
        with self._lock:
            self.invocations[report.function] += 1
            if report.error is not None:
                kind = str(report.error.get("errorType"))
                self.errors[f"{report.function} {kind}"] += 1
                message = str(report.error.get("errorMessage", ""))
                if not _INJECTED.search(message):
                    self.collateral[f"{kind}: {_normalized(message)}"] += 1
                return
            result = report.result if isinstance(report.result, dict) else {}
            if report.function == "StartRunFunction":
                self.last_end_time = result.get("end_time")
            elif report.function == "QueryToParquetFunction":
                start, end = result.get("start_time"), result.get("end_time")
                if start is not None and end is not None and start >= end:
                    self.overtaken += 1
                if int(result.get("windows", 1)) > 1:
                    self.plans += 1
                    self.sub_windows += int(result["windows"])
            elif report.function == "CommitTableFunction":
                if result.get("status") == "written":
                    self.written += 1
                    self.rows_written += int(result.get("rows", 0))
                elif result.get("status") == "skipped":
                    self.skipped += 1
                elif result.get("status") == "partial":
                    self.partial += 1


_INJECTED = re.compile(r"chaos: |: (SlowDown|InternalError|AccessDenied)\b")


def _normalized(message: str) -> str:
    """``message`` without its table, window, keys and numbers."""
    message = message.split("; table=", 1)[0]
    message = re.sub(r"\S+/\S+", "<key>", message)
    return re.sub(r"\d{5,}", "N", message)[:120]


class LogTally(logging.Handler):
    """Counts the pipeline's WARNING and CRITICAL lines by message (and keeps nothing else)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: Counter[str] = Counter()
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(("totes-ingest", "service_undefined")):
            return
        with self._guard:
            self.messages[f"{record.levelname} {record.getMessage()}"] += 1


@dataclass
class LakeAudit:
    files: int = 0
    versions: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    misplaced: list[str] = field(default_factory=list)
    chain_breaks: list[str] = field(default_factory=list)
    staged_leftovers: list[str] = field(default_factory=list)
    staged_orphans: int = 0  # staged windows never committed (lifecycle expires them)

    def unexplained_leftovers(self, explained: set[str]) -> list[str]:
        """Leftovers not accounted for by ``explained`` keys (refused deletes, uploads
        after the delete)."""
        return [key for key in self.staged_leftovers if key not in explained]


def audit_lake(conn: Any, s3: Any, tables: Iterable[str]) -> LakeAudit:
    report = LakeAudit()
    for table in tables:
        report.lost += mismatches(conn, s3, table)
        report.duplicated += [f"{table} {pk} @ {at}" for pk, at in duplicated_versions(s3, table)]
        _check_chain(s3, table, report)
    _check_staging(s3, report)
    return report


def _read_claim(s3: Any, key: str, table: str) -> Claim | None:
    try:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    return Claim.parse(body, key=key, table=table)


def _check_chain(s3: Any, table: str, report: LakeAudit) -> None:
    """Each file is named by the claim for its start, and holds only versions of the
    cursor range that claim recorded (its re-read range included)."""
    start = None
    for key in table_files(s3, table):
        parsed = parse_file_key(key)
        assert parsed is not None
        end = parsed[1]
        report.files += 1
        claim = _read_claim(s3, claim_key(table, start), table)
        if claim is None or claim.final_key != key:
            owner = claim.final_key if claim else "nothing"
            report.chain_breaks.append(f"{key}: the claim for its start names {owner}")
        cursor = claim.cursor if claim is not None and claim.cursor else CursorRange(start, end)
        low = cursor.reread_from or cursor.start
        for row in read_file(s3, key).to_pylist():
            report.versions += 1
            at = row["last_updated"]
            if at >= cursor.end or (low is not None and at < low):
                report.misplaced.append(f"{key}: {table} {row[f'{table}_id']} @ {at}")
        start = end


def _check_staging(s3: Any, report: LakeAudit) -> None:
    for key in lake_keys(s3, STAGING_PREFIX):
        table, _, window = key[len(STAGING_PREFIX) :].partition("/")
        start_stamp = window.split("-", 1)[0]
        claim = _read_claim(s3, f"{CLAIMS_PREFIX}{table}/{start_stamp}.json", table)
        committed = (
            claim is not None and claim.staging_key == key and bool(lake_keys(s3, claim.final_key))
        )
        if committed:
            report.staged_leftovers.append(key)
        else:
            report.staged_orphans += 1
