"""The audit: prove a table's lake against its source, repair what is missing, record deletes.

Per table it compares the source's ``(primary key, last_updated)`` pairs with the lake's
(only those two columns of the table's committed files and repair objects, read with
ranged GETs by ``reread.lake_version_batches``) and finds:

- **missing** versions: a source row whose current version, with a cursor value in the
  judged range ``[horizon, bound)``, no lake object holds. Repaired (unless report-only):
  the rows are copied by ``ctid`` in the audit's own snapshot with the extract's own code
  (``extract.extract_rows``) into one repair object per key-space partition,
  ``table/yyyy/mm/dd/hhmmssffffff-repair-<n>.parquet`` (``generate_file_key``): an
  ordinary committed object of the table, same schema, that never moves the watermark;
- **newer in the lake**: keys whose newest lake version has a cursor above the source's
  current one (impossible for a clock-true writer: flagged, never "fixed");
- **deleted** keys: in the lake, gone from the source. Each gets one tombstone in
  ``_tombstones/table/yyyy/mm/dd/hhmmssffffff.parquet`` (key columns as in the data files,
  ``deleted_at`` the audit's observation instant, ``last_version`` the newest cursor value
  the lake held for it), unless a tombstone with that ``last_version`` exists already.

**The judged range ends at a bound no ingest window will read below.** The next window
from the table's watermark re-reads from ``min(C, m) - REREAD_LAG_SECONDS`` (``cursor``:
``C`` the watermark's cursor end, ``m`` the lowest wall-clock time of the window); the
audit computes the lowest such start over every window that may still commit (from the
watermark, over the fall-back reach), and judges only versions below it. A version it
repairs can then never also be written by a window (the only two writers of a table's
versions never reach the same one), and versions above the bound are left to the
pipeline and the next audit.

**Cost is bounded by a partition, not the table.** A single integer key is split into
ranges of ``AUDIT_PARTITION_KEYS`` source keys each (boundaries walked along the key's
index, so a sparse key space, bigint extremes included, costs no more). The lake is read
once, each row group's pairs spilled to a local file per partition (Arrow IPC); then,
in one REPEATABLE READ, READ ONLY snapshot taken *after* the lake was read (so every key
in the lake was committed at the source before it), each partition's source pairs are
read with one primary-key range query and joined with its spill. A key of any other
shape is one partition.
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import BotoCoreError, ClientError

from totes_ingest import config
from totes_ingest.aws import as_lake_error, error_code, lake_errors
from totes_ingest.catalog import table_columns
from totes_ingest.cursor import _REACH, cursor_range
from totes_ingest.db_errors import source_errors
from totes_ingest.errors import IngestError, LakeError, ReconciliationError
from totes_ingest.extract import SESSION_SETTINGS, extract_rows, source_alias
from totes_ingest.format_time import format_time
from totes_ingest.generate_file_key import (
    is_tombstone_key,
    parse_repair_key,
    repair_key,
    tombstone_key,
    tombstone_prefix,
)
from totes_ingest.identifiers import quote_ident
from totes_ingest.lake import Lake
from totes_ingest.observability import logger, put_metric
from totes_ingest.parquet_sink import writer_options
from totes_ingest.pg_types import schema_of
from totes_ingest.reread import (
    FILES_AHEAD,
    absent_pairs,
    ctid_predicate,
    key_text,
    key_values,
    lake_version_batches,
    pairs_query,
    sorted_ctids,
    source_pairs,
)
from totes_ingest.source import CURSOR_COLUMN, SourceTable, resolve_table, resolve_tables

Status = Literal["whole", "repaired", "not whole", "skipped", "failed"]

META_REPAIR: Final = "totes-repair"  # user metadata of a repair object: the audit's id
META_ROWS: Final = "totes-rows"
COLUMNS_METADATA: Final = "columns"
DELETED_AT: Final = "deleted_at"
LAST_VERSION: Final = "last_version"
_EXAMPLES: Final = 5
_INTEGER_KEYS = (pa.int16(), pa.int32(), pa.int64())
_DELETED_AT_TYPE: Final = pa.timestamp("us", tz="UTC")


class AuditError(IngestError):
    """The audit could not judge a table (its message names the table)."""


@dataclass(frozen=True)
class AuditSettings:
    """What an audit judges and whether it writes (see config for each setting)."""

    horizon_days: float | None = config.DEFAULT_AUDIT_HORIZON_DAYS  # None: all history
    repair: bool = True
    partition_keys: int = config.DEFAULT_AUDIT_PARTITION_KEYS
    reread_lag_seconds: float = config.DEFAULT_REREAD_LAG_SECONDS
    schema: str = config.DEFAULT_SOURCE_SCHEMA
    source_timezone: str | None = None  # None: the database's TimeZone
    row_group_rows: int = config.DEFAULT_ROW_GROUP_ROWS

    @classmethod
    def from_environment(
        cls, *, full: bool = False, repair: bool = True, horizon_days: float | None = None
    ) -> AuditSettings:
        return cls(
            horizon_days=None if full else (horizon_days or config.audit_horizon_days()),
            repair=repair,
            partition_keys=config.audit_partition_keys(),
            reread_lag_seconds=config.reread_lag_seconds(),
            schema=config.source_schema(),
            source_timezone=config.source_timezone(),
            row_group_rows=config.row_group_rows(),
        )


@dataclass
class TableAudit:
    """What the audit found in one table, and what it wrote."""

    table: str
    status: Status = "whole"
    observed: str | None = None  # the audit's instant (database clock, UTC)
    judged_from: str | None = None  # cursor values judged: [judged_from, judged_until)
    judged_until: str | None = None
    partitions: int = 0
    source_rows: int = 0
    lake_versions: int = 0
    missing: int = 0
    repaired: int = 0
    newer_in_lake: int = 0
    deleted: int = 0  # keys found deleted with no tombstone yet
    tombstoned: int = 0
    # Keys live at the source that a tombstone hides (a row restored with the version
    # its tombstone names): each gets a marker lifting the key's tombstones.
    revived: int = 0
    stray: int = 0  # objects under the table's prefix no commit and no audit wrote
    repair_keys: list[str] = field(default_factory=list)
    tombstone_key: str | None = None
    examples: dict[str, list[str]] = field(default_factory=dict)
    reason: str | None = None

    @property
    def whole(self) -> bool:
        """Every judged version is in the lake and no key is newer there than at the
        source; every deleted key has its tombstone."""
        return self.status in ("whole", "repaired", "skipped")

    def to_payload(self) -> dict[str, Any]:
        return asdict(self)

    def example(self, kind: str, text: str) -> None:
        found = self.examples.setdefault(kind, [])
        if len(found) < _EXAMPLES:
            found.append(text)


def audit_table(
    conn: Any, lake: Lake, table_name: str, settings: AuditSettings, *, audit_id: str
) -> TableAudit:
    """Audit one table (see the module's docstring); its findings, logged and measured."""
    source = resolve_table(conn, table_name, settings.schema)
    report = TableAudit(table_name)
    if not source.key:
        report.status, report.reason = "skipped", "no primary key: versions cannot be told apart"
        logger.warning("Table not audited", extra={"table": table_name, "reason": report.reason})
        return report
    newest = next(lake.committed(table_name), None)
    if newest is None:
        report.reason = "nothing committed yet"
        logger.info("Nothing to audit", extra={"table": table_name})
        return report
    bound = judged_bound(conn, source, settings, newest[1].end, newest[1].cursor_end)
    since = None if settings.horizon_days is None else bound - timedelta(days=settings.horizon_days)
    report.judged_from = None if since is None else format_time(since)
    report.judged_until = format_time(bound)
    with tempfile.TemporaryDirectory(prefix="totes-audit-") as workdir:
        try:
            _Audit(conn, lake, source, settings, report, Path(workdir), audit_id).run(since, bound)
        except pa.ArrowException as e:  # a value Arrow cannot compare (a cursor of infinity)
            raise AuditError(
                f"could not compare the lake with the source: {e}", table=table_name
            ) from e
    _publish(report)
    return report


def audit_tables(
    conn: Any, lake: Lake, tables: list[str], settings: AuditSettings, *, audit_id: str
) -> list[TableAudit]:
    """Audit each of ``tables`` (names checked first: InvalidEvent names every bad one);
    a table that fails is reported as failed, with why, and the others go on."""
    resolve_tables(conn, tables, settings.schema)
    reports = []
    for table in tables:
        try:
            reports.append(audit_table(conn, lake, table, settings, audit_id=audit_id))
        except IngestError as e:
            logger.critical(
                "Audit failed", extra={"table": table, "error": type(e).__name__, "reason": str(e)}
            )
            reports.append(TableAudit(table, status="failed", reason=str(e)))
    return reports


def judged_bound(
    conn: Any,
    source: SourceTable,
    settings: AuditSettings,
    watermark: datetime,
    cursor_end: datetime,
) -> datetime:
    """The lowest cursor value any window that may still commit re-reads from.

    Windows that may commit start at the watermark or later (an older start's claim is
    taken); the next one re-reads from ``min(C, m) - lag``, ``m`` reaching at most the
    fall-back reach past the watermark, and later ones from no lower.
    """
    zone = settings.source_timezone or _database_zone(conn)
    rng = cursor_range(
        conn,
        source,
        zone,
        watermark,
        watermark + _REACH,
        cursor_end,
        timedelta(seconds=settings.reread_lag_seconds),
    )
    assert rng.start is not None
    return rng.reread_from if rng.reread_from is not None else rng.start


_OFFSET_SPAN_SQL = """
SELECT (max(o) - min(o))::int8 FROM (
  SELECT extract(epoch FROM (g AT TIME ZONE :zone) - (g AT TIME ZONE 'UTC')) AS o
  FROM generate_series(now() - interval '2 years', now() + interval '2 years',
                       interval '1 day') AS g) AS offsets
"""


def _fall_back_allowance(conn: Any, source: SourceTable, settings: AuditSettings) -> timedelta:
    """How far a later version's wall-clock cursor may lie below an earlier one's: the
    zone's offset span (a fall-back repeats that much), zero for instants and fixed zones."""
    if source.cursor_type != "timestamp":
        return timedelta(0)
    zone = settings.source_timezone or _database_zone(conn)
    with source_errors("time zone lookup", table=source.name):
        ((span,),) = conn.run(_OFFSET_SPAN_SQL, zone=zone)
    return timedelta(seconds=int(span or 0))


def _database_zone(conn: Any) -> str:
    with source_errors("time zone lookup"):
        ((zone,),) = conn.run("SELECT current_setting('TimeZone')")
    return str(zone)


class _Audit:
    """One table's audit: the lake spilled by partition, then each partition judged."""

    def __init__(
        self,
        conn: Any,
        lake: Lake,
        source: SourceTable,
        settings: AuditSettings,
        report: TableAudit,
        workdir: Path,
        audit_id: str,
    ) -> None:
        self.conn, self.lake, self.source, self.settings = conn, lake, source, settings
        self.report, self.workdir, self.audit_id = report, workdir, audit_id
        self.table = source.name
        self.label = f"audit {audit_id}"
        # The data files' types (the profile the repair objects are written with too).
        self.schema = schema_of(
            table_columns(conn, self.table, relation=source.relation, profile=config.type_profile())
        )
        self.cursor_type = self.schema.field(CURSOR_COLUMN).type
        self.key_types = [self.schema.field(name).type for name in source.key]
        self.boundaries = self._boundaries()
        self.fall_back_allowance = _fall_back_allowance(conn, source, settings)
        self.report.partitions = len(self.boundaries) + 1

    # -- the key space -------------------------------------------------------------------

    @property
    def _ranged(self) -> bool:
        return len(self.source.key) == 1 and self.key_types[0] in _INTEGER_KEYS

    def _boundaries(self) -> list[int]:
        """Starts of the partitions after the first (the first and last are open): every
        ``partition_keys``-th key of the source, walked along its index, so a partition
        holds at most that many source keys however sparse the key space."""
        if not self._ranged:
            return []
        column = quote_ident(self.source.key[0])
        step = self.settings.partition_keys
        boundaries: list[int] = []
        while True:
            above = f"WHERE {column} >= {boundaries[-1]} " if boundaries else ""
            sql = (
                f"SELECT {column}::int8 FROM {self.source.relation} "  # nosec B608
                f"{above}ORDER BY {column} OFFSET {int(step)} LIMIT 1"
            )
            with source_errors("audit key range", table=self.table):
                rows = self.conn.run(sql)
            if not rows:
                return boundaries
            boundaries.append(int(rows[0][0]))

    def _predicate(self, partition: int) -> str:
        """SQL: the partition's key range (bounds are integers of our own)."""
        if not self._ranged or not self.boundaries:
            return "TRUE"
        column = quote_ident(self.source.key[0])
        clauses = []
        if partition > 0:
            clauses.append(f"{column} >= {self.boundaries[partition - 1]}")
        if partition < len(self.boundaries):
            clauses.append(f"{column} < {self.boundaries[partition]}")
        return " AND ".join(clauses)

    def _partition_of(self, keys: pa.Array) -> np.ndarray:
        if not self.boundaries:
            return np.zeros(len(keys), dtype=np.int64)
        values = pc.cast(keys, pa.int64()).to_numpy(zero_copy_only=False)
        found: np.ndarray = np.searchsorted(np.asarray(self.boundaries), values, side="right")
        return found

    # -- the lake, spilled ------------------------------------------------------------

    def _values(self, kind: str) -> list[pa.Field]:
        """The columns a spill of ``kind`` holds beside the key (as text)."""
        cursor = pa.field(CURSOR_COLUMN, self.cursor_type)
        if kind == "lake":
            return [cursor]
        return [pa.field(LAST_VERSION, self.cursor_type), pa.field(DELETED_AT, _DELETED_AT_TYPE)]

    def _spill(self, kind: str, batches: Iterator[pa.Table]) -> int:
        values = self._values(kind)
        names = [*self.source.key, *(f.name for f in values)]
        schema = pa.schema([*(pa.field(n, pa.string()) for n in self.source.key), *values])
        writers: dict[int, ipc.RecordBatchStreamWriter] = {}
        rows = 0
        try:
            for batch in batches:
                batch = pa.Table.from_arrays([batch.column(n) for n in names], names=names).cast(
                    schema
                )
                rows += batch.num_rows
                parts = self._partition_of(batch.column(self.source.key[0]).combine_chunks())
                for part in np.unique(parts):
                    if part not in writers:
                        path = self.workdir / f"{kind}-{part}.arrows"
                        writers[part] = ipc.new_stream(str(path), schema)
                    writers[part].write_table(batch.filter(pa.array(parts == part)))
        finally:
            for writer in writers.values():
                writer.close()
        return rows

    def _spilled(self, kind: str, partition: int) -> pa.Table:
        path = self.workdir / f"{kind}-{partition}.arrows"
        if path.exists():
            with ipc.open_stream(str(path)) as reader:
                return reader.read_all()
        return pa.table(
            {n: pa.array([], pa.string()) for n in self.source.key}
            | {f.name: pa.array([], f.type) for f in self._values(kind)}
        )

    def _listed(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with lake_errors(f"list of {prefix}", table=self.table):
            pages = self.lake.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.lake.bucket, Prefix=prefix
            )
            keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
        return sorted(keys)

    def _tombstones(self) -> Iterator[pa.Table]:
        for key in self._listed(tombstone_prefix(self.table)):
            if not is_tombstone_key(key, self.table):
                continue
            with lake_errors(f"read of {key}", table=self.table):
                body = self.lake.s3.get_object(Bucket=self.lake.bucket, Key=key)["Body"].read()
            names = [*self.source.key, LAST_VERSION, DELETED_AT]
            read = pq.read_table(pa.py_buffer(body), columns=names)
            keys = [key_text(read.column(n).combine_chunks(), self.table) for n in self.source.key]
            yield pa.Table.from_arrays(
                [*keys, read.column(LAST_VERSION), read.column(DELETED_AT)], names=names
            )

    # -- the audit ----------------------------------------------------------------------

    def _objects(self, since: datetime | None) -> tuple[list[str], list[str], list[str]]:
        """The table's objects to read, from one listing of its prefix: the committed keys
        whose window reaches ``since`` (newest first), the audits' repair objects, and the
        objects that readers of ``table/**/*.parquet`` take for its data but neither the
        commit protocol nor an audit wrote ("stray"), among those no older than the oldest
        of those keys (all of them for ``--full``).

        Listed before the chain is walked: a key committed meanwhile is then either not
        listed or, its claim being written before it, found in the chain; never stray."""
        listed = self._listed(f"{self.table}/")
        chain = [
            key
            for key, _ in itertools.takewhile(
                lambda found: since is None or found[1].cursor_end > since,
                self.lake.committed(self.table, ahead=FILES_AHEAD),
            )
        ]
        repairs = [
            key
            for key in listed
            if (parsed := parse_repair_key(key)) is not None and parsed[0] == self.table
        ]
        known = {*chain, *repairs}
        oldest = min(chain, default=None)
        strays = [
            key
            for key in listed
            if key.endswith(".parquet")
            and key not in known
            and (since is None or oldest is None or key > oldest)
        ]
        return chain, repairs, strays

    def run(self, since: datetime | None, bound: datetime) -> None:
        chain, repairs, strays = self._objects(since)
        self.report.stray = len(strays)
        for key in strays[:_EXAMPLES]:
            self.report.example("stray", key)
        history = lake_version_batches(self.lake, self.source, since, None, keys=chain)
        repaired = lake_version_batches(
            self.lake, self.source, since, None, keys=[*repairs, *strays]
        )
        # One spill of both: each partition's file is written once (a second spill of a
        # kind would start its files again, dropping the committed versions).
        self.report.lake_versions = self._spill("lake", itertools.chain(history, repaired))
        self._spill("tomb", self._tombstones())
        db = _Snapshot(self.conn, self.table, self.label)
        with db:
            observed = db.observed()
            self.report.observed = format_time(observed)
            tombstones = _Tombstones(self, observed)
            for partition in range(self.report.partitions):
                self._judge(db, partition, since, bound, observed, tombstones)
            self.report.tombstone_key = tombstones.upload(self.settings.repair)
        self.report.status = _status(self.report, self.settings.repair)

    def _judge(
        self,
        db: _Snapshot,
        partition: int,
        since: datetime | None,
        bound: datetime,
        observed: datetime,
        tombstones: _Tombstones,
    ) -> None:
        key = list(self.source.key)
        ((csv,),) = db.run(pairs_query(self.source, self._predicate(partition)))
        source = source_pairs((csv or "").encode(), self.source, self.cursor_type)
        self.report.source_rows += source.num_rows
        lake = self._spilled("lake", partition)
        cursor = source.column(CURSOR_COLUMN)
        judged = pc.less(cursor, _scalar(bound, self.cursor_type))
        if since is not None:
            judged = pc.and_(judged, pc.greater_equal(cursor, _scalar(since, self.cursor_type)))
        missing = absent_pairs(source.filter(judged), lake, self.source)
        self._missing(db, partition, missing, observed)
        newest = _renamed(
            lake.group_by(key).aggregate([(CURSOR_COLUMN, "max")]),
            f"{CURSOR_COLUMN}_max",
            "lake_newest",
        )
        both = source.join(newest, keys=key, join_type="inner", use_threads=False)
        ahead = pc.subtract(both.column("lake_newest"), both.column(CURSOR_COLUMN))
        newer = both.filter(pc.greater(ahead, pa.scalar(self.fall_back_allowance)))
        self.report.newer_in_lake += newer.num_rows
        for row in newer.slice(0, _EXAMPLES).to_pylist():
            self.report.example(
                "newer_in_lake",
                f"{_key_text(row, key)}: lake {row['lake_newest']}, source {row[CURSOR_COLUMN]}",
            )
        marked = _in_force(self._spilled("tomb", partition), key)
        # Live at the source as the lake holds it, yet hidden: its newest lake version is
        # at or below its tombstone (a row restored from a backup as it was). A source
        # version newer than the lake's is not: once ingested, it is above the tombstone.
        hidden = both.join(marked, keys=key, join_type="inner", use_threads=False)
        newest_hidden = pc.greater_equal(hidden.column("tombstoned"), hidden.column("lake_newest"))
        held = pc.less_equal(hidden.column(CURSOR_COLUMN), hidden.column("lake_newest"))
        hidden = hidden.filter(pc.and_(newest_hidden, held))
        self.report.revived += hidden.num_rows
        for row in hidden.slice(0, _EXAMPLES).to_pylist():
            self.report.example("revived", _key_text(row, key))
        tombstones.revive(hidden)
        gone = newest.join(source, keys=key, join_type="left anti", use_threads=False)
        gone = gone.join(marked, keys=key, join_type="left outer", use_threads=False)
        fresh = gone.filter(
            pc.or_kleene(
                pc.is_null(gone.column("tombstoned")),
                pc.less(gone.column("tombstoned"), gone.column("lake_newest")),
            )
        )
        self.report.deleted += fresh.num_rows
        for row in fresh.slice(0, _EXAMPLES).to_pylist():
            self.report.example("deleted", _key_text(row, key))
        tombstones.add(fresh)

    def _missing(
        self, db: _Snapshot, partition: int, missing: pa.Table, observed: datetime
    ) -> None:
        self.report.missing += missing.num_rows
        for row in missing.slice(0, _EXAMPLES).to_pylist():
            self.report.example(
                "missing", f"{_key_text(row, list(self.source.key))} @ {row[CURSOR_COLUMN]}"
            )
        if not missing.num_rows or not self.settings.repair:
            return
        ctids = sorted_ctids(missing)
        path = self.workdir / f"repair-{partition}.parquet"
        predicate = ctid_predicate(ctids, source_alias())
        result = extract_rows(
            self.conn,
            self.source,
            predicate,
            path,
            label=self.label,
            row_group_rows=self.settings.row_group_rows,
        )
        if result.rows != len(ctids):
            raise ReconciliationError(
                f"repair wrote {result.rows} rows of the {len(ctids)} missing versions",
                table=self.table,
                window=self.label,
            )
        key = repair_key(self.table, observed, partition)
        from totes_ingest.pipeline import schema_signature  # the pipeline's; lazily (cycle-free)

        metadata = {
            COLUMNS_METADATA: schema_signature(result.schema),
            META_REPAIR: self.audit_id,
            META_ROWS: str(result.rows),
        }
        _put_once(self.lake, key, path, metadata, self.table)
        self.report.repaired += result.rows
        self.report.repair_keys.append(key)
        path.unlink()


class _Snapshot:
    """The audit's one REPEATABLE READ, READ ONLY transaction over the source."""

    def __init__(self, conn: Any, table: str, label: str) -> None:
        self.conn, self.table, self.label = conn, table, label

    def __enter__(self) -> _Snapshot:
        self.run(
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; "
            + "; ".join(SESSION_SETTINGS)
        )
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if kind is None:
            self.run("COMMIT")
            return
        with contextlib.suppress(Exception):
            self.conn.run("ROLLBACK")

    def run(self, sql: str, **kwargs: Any) -> Any:
        with source_errors("audit", table=self.table, window=self.label):
            return self.conn.run(sql, **kwargs)

    def observed(self) -> datetime:
        """The snapshot's instant, from the database clock, naive UTC."""
        ((now,),) = self.run("SELECT now()")
        moment: datetime = now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now
        return moment


class _Tombstones:
    """The tombstones of one table's audit: one Parquet object, streamed partition by
    partition to a local file, uploaded at the end."""

    def __init__(self, audit: _Audit, observed: datetime) -> None:
        self.audit = audit
        self.observed = observed
        fields = [audit.schema.field(name) for name in audit.source.key]
        self.schema = pa.schema(
            [
                *fields,
                pa.field(DELETED_AT, _DELETED_AT_TYPE),
                pa.field(LAST_VERSION, audit.cursor_type),
            ]
        )
        self.path = audit.workdir / "tombstones.parquet"
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0
        self.revived = 0

    def add(self, gone: pa.Table) -> None:
        """A tombstone for each key of ``gone``, at its newest lake version."""
        self._write(gone, gone.column("lake_newest").cast(self.audit.cursor_type))

    def revive(self, hidden: pa.Table) -> None:
        """A marker for each key of ``hidden`` (``last_version`` null) lifting its
        tombstones: from this audit's instant on, the key is live again."""
        self._write(hidden, pa.nulls(hidden.num_rows, self.audit.cursor_type))
        self.revived += hidden.num_rows if self.audit.settings.repair else 0

    def _write(self, found: pa.Table, last_version: pa.Array) -> None:
        if not found.num_rows or not self.audit.settings.repair:
            return
        keys = [
            _typed(found.column(name), self.schema.field(name).type, self.audit.table)
            for name in self.audit.source.key
        ]
        deleted_at = pa.array(
            np.full(found.num_rows, np.datetime64(self.observed, "us")), _DELETED_AT_TYPE
        )
        table = pa.Table.from_arrays([*keys, deleted_at, last_version], schema=self.schema)
        if self.writer is None:
            self.writer = pq.ParquetWriter(
                str(self.path), self.schema, **writer_options(self.schema)
            )
        self.writer.write_table(table)
        self.rows += table.num_rows

    def upload(self, repair: bool) -> str | None:
        if self.writer is None:
            return None
        self.writer.close()
        key = tombstone_key(self.audit.table, self.observed)
        _put_once(self.audit.lake, key, self.path, {META_ROWS: str(self.rows)}, self.audit.table)
        self.audit.report.tombstoned = self.rows - self.revived
        return key


def _put_once(lake: Lake, key: str, path: Path, metadata: dict[str, str], table: str) -> None:
    """Upload ``path`` to ``key`` only if no object is there (If-None-Match)."""
    with path.open("rb") as body:
        try:
            lake.s3.put_object(
                Bucket=lake.bucket, Key=key, Body=body, IfNoneMatch="*", Metadata=metadata
            )
        except ClientError as e:
            if error_code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise LakeError(f"{key} exists already: another audit wrote it", table=table) from e
            raise as_lake_error(e, f"put of {key}", table=table) from e
        except BotoCoreError as e:
            raise as_lake_error(e, f"put of {key}", table=table) from e


def _typed(column: pa.ChunkedArray | pa.Array, arrow_type: pa.DataType, table: str) -> pa.Array:
    """A key column, held as text (``reread.key_text``), back in the data files' type."""
    text = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    try:
        return key_values(text, arrow_type, table)
    except LakeError as e:
        raise AuditError(f"cannot write a tombstone key: {e}", table=table) from e


def _key_text(row: dict[str, Any], key: list[str]) -> str:
    return ", ".join(f"{name}={row[name]}" for name in key)


def _scalar(moment: datetime, arrow_type: pa.DataType) -> pa.Scalar:
    if getattr(arrow_type, "tz", None):
        moment = moment.replace(tzinfo=UTC)
    return pa.scalar(moment, type=arrow_type)


def _renamed(table: pa.Table, old: str, new: str) -> pa.Table:
    return table.rename_columns([new if name == old else name for name in table.column_names])


def _status(report: TableAudit, repair: bool) -> Status:
    unrepaired = not repair and (report.missing > 0 or report.deleted > 0 or report.revived > 0)
    if report.newer_in_lake > 0 or report.stray > 0 or unrepaired:
        return "not whole"
    return "repaired" if report.repaired or report.tombstoned or report.revived else "whole"


def _in_force(tombstones: pa.Table, key: list[str]) -> pa.Table:
    """Each tombstoned key's ``tombstoned``: the greatest ``last_version`` of its
    tombstones written after its latest revival marker (``last_version`` null), if any
    (see ``lake_views.current_view_sql``, which reads them the same way)."""
    revivals = tombstones.filter(pc.is_null(tombstones.column(LAST_VERSION)))
    revived = _renamed(
        revivals.group_by(key).aggregate([(DELETED_AT, "max")]), f"{DELETED_AT}_max", "revived_at"
    )
    marks = tombstones.filter(pc.is_valid(tombstones.column(LAST_VERSION)))
    marks = marks.join(revived, keys=key, join_type="left outer", use_threads=False)
    marks = marks.filter(
        pc.or_kleene(
            pc.is_null(marks.column("revived_at")),
            pc.greater(marks.column(DELETED_AT), marks.column("revived_at")),
        )
    )
    return _renamed(
        marks.group_by(key).aggregate([(LAST_VERSION, "max")]), f"{LAST_VERSION}_max", "tombstoned"
    )


def _publish(report: TableAudit) -> None:
    """The audit's metrics, and a CRITICAL line when any version was missing."""
    for name, value in (
        ("MissingVersions", report.missing),
        ("RepairedVersions", report.repaired),
        ("DeletedKeys", report.deleted),
        ("RevivedKeys", report.revived),
        ("NewerInLakeKeys", report.newer_in_lake),
        ("StrayObjects", report.stray),
    ):
        put_metric(name, MetricUnit.Count, value, report.table)
    extra = {k: v for k, v in report.to_payload().items() if k != "examples"}
    extra["examples"] = report.examples
    if report.missing:
        logger.critical("The lake was missing row versions", extra=extra)
    elif report.newer_in_lake:
        logger.critical("The lake holds versions newer than the source's", extra=extra)
    elif report.stray:
        logger.critical("Objects under the table's prefix no commit wrote", extra=extra)
    elif report.deleted:
        logger.warning("Keys deleted at the source", extra=extra)
    elif report.revived:
        logger.warning("Tombstoned keys live again at the source", extra=extra)
    else:
        logger.info("Audited", extra=extra)
