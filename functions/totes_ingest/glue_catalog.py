"""The Glue Data Catalog kept by the pipeline: each table's Glue table, its tombstones'
table and its ``<table>_current`` Athena view.

The commit step calls :meth:`GlueCatalog.sync` after publishing a window, with the
columns QueryToParquet read from the PostgreSQL catalog (never from the data). The raw
table is a Parquet table over ``s3://<bucket>/<table>/`` with partition projection over
the seed's ``yyyy/mm/dd`` folders (a ``date`` projection of the partition column
``ingest_day``, format ``yyyy/MM/dd``, from the table's first day to NOW, and
``storage.location.template``): no crawler, no MSCK, no partitions to add. Its
tombstones' table is the same over ``s3://<bucket>/_tombstones/<table>/``.

Only additive changes update a table in place: a new column is appended (older files
read it as NULL) and the view is rewritten over it. A column dropped from the source or
retyped is a WARNING and a ``CatalogSchemaConflict`` metric, and its Glue definition is
kept, so the table stays readable with the columns it had.

Cheap: a process remembers the columns it last synced for each table (Lambda keeps the
process between invocations), so a warm commit whose columns are unchanged makes no
Glue call; otherwise it is one GetTable and, only if something changed, the writes. A
failed sync is not remembered, so the next commit retries it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final, TypeVar

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import BotoCoreError, ClientError

from totes_ingest.aws import error_code, is_transient
from totes_ingest.errors import CatalogError, LakeUnavailable
from totes_ingest.lake_views import (
    CURRENT_SUFFIX,
    TOMBSTONES_PREFIX,
    TOMBSTONES_SUFFIX,
    TableColumns,
    current_view_sql,
    presto_view_text,
)
from totes_ingest.observability import logger, put_metric

T = TypeVar("T")

PARTITION_COLUMN: Final = "ingest_day"
ATHENA_CATALOG: Final = "awsdatacatalog"
_PARQUET_SERDE: Final = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
_PARQUET_INPUT: Final = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
_PARQUET_OUTPUT: Final = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"

_synced: dict[tuple[str, str], TableColumns] = {}
_synced_lock = threading.Lock()


def forget_synced() -> None:
    """Forget what this process synced (a fresh Lambda process; tests)."""
    with _synced_lock:
        _synced.clear()


class GlueCatalog:
    """One Glue database's tables of one lake bucket."""

    def __init__(self, glue: Any, database: str, bucket: str) -> None:
        self.glue = glue
        self.database = database
        self.bucket = bucket

    def sync(self, columns: TableColumns, first_day: Callable[[], datetime]) -> str:
        """Create or update ``columns.table``'s Glue table, tombstones and view.

        ``first_day()`` is the day of the table's oldest folder (the projection's start),
        asked only when the table is created.
        Returns what was done: ``unchanged`` (no call), ``checked``, ``created``,
        ``updated``.
        """
        remembered = (self.database, columns.table)
        with _synced_lock:
            if _synced.get(remembered) == columns:
                return "unchanged"
        existing = self._get(columns.table)
        if existing is None:
            self._create(columns, first_day())
            outcome = "created"
        else:
            outcome = self._update(columns, existing)
        with _synced_lock:
            _synced[remembered] = columns
        logger.info(
            "Glue catalog synced",
            extra={"table": columns.table, "database": self.database, "outcome": outcome},
        )
        return outcome

    # --- the raw table ---

    def _create(self, columns: TableColumns, first_day: datetime) -> None:
        table = columns.table
        self._call(
            "CreateTable",
            table,
            lambda: self.glue.create_table(
                DatabaseName=self.database,
                TableInput=self._table_input(table, table + "/", columns.columns, first_day),
            ),
            exists_ok=True,
        )
        if columns.has_current_view:
            self._call(
                "CreateTable",
                table,
                lambda: self.glue.create_table(
                    DatabaseName=self.database,
                    TableInput=self._table_input(
                        table + TOMBSTONES_SUFFIX,
                        f"{TOMBSTONES_PREFIX}{table}/",
                        columns.tombstone_columns,
                        first_day,
                    ),
                ),
                exists_ok=True,
            )
            self._put_view(columns, create=True)
        else:
            logger.warning("No primary key: no current view", extra={"table": table})

    def _update(self, columns: TableColumns, existing: dict[str, Any]) -> str:
        table = columns.table
        have = [(c["Name"], c["Type"]) for c in existing["StorageDescriptor"]["Columns"]]
        have_types = dict(have)
        wanted = dict(columns.columns)
        added = [(n, t) for n, t in columns.columns if n not in have_types]
        dropped = [n for n, _ in have if n not in wanted]
        retyped = [n for n, t in have if n in wanted and wanted[n] != t]
        if dropped or retyped:
            logger.warning(
                "Columns dropped or retyped: their Glue definitions are kept",
                extra={"table": table, "dropped": dropped, "retyped": retyped},
            )
            put_metric("CatalogSchemaConflict", MetricUnit.Count, 1, table)
        if not added:
            return "checked"
        merged = TableColumns(table, (*have, *added), columns.key, columns.cursor)
        table_input = _as_input(existing)
        table_input["StorageDescriptor"]["Columns"] = _glue_columns(merged.columns)
        self._call(
            "UpdateTable",
            table,
            lambda: self.glue.update_table(DatabaseName=self.database, TableInput=table_input),
        )
        if merged.has_current_view:
            self._put_view(merged, create=False)
        logger.info(
            "Glue table columns added",
            extra={"table": table, "added": [name for name, _ in added]},
        )
        return "updated"

    def _table_input(
        self,
        name: str,
        prefix: str,
        columns: tuple[tuple[str, str], ...],
        first_day: datetime,
    ) -> dict[str, Any]:
        if any(column == PARTITION_COLUMN for column, _ in columns):
            raise CatalogError(
                f"a column is named {PARTITION_COLUMN}, the lake's partition column",
                table=name,
            )
        location = f"s3://{self.bucket}/{prefix}"
        key = f"projection.{PARTITION_COLUMN}"
        return {
            "Name": name,
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {
                "EXTERNAL": "TRUE",
                "classification": "parquet",
                "parquet.compression": "ZSTD",
                "projection.enabled": "true",
                f"{key}.type": "date",
                f"{key}.format": "yyyy/MM/dd",
                f"{key}.range": f"{first_day:%Y/%m/%d},NOW",
                f"{key}.interval": "1",
                f"{key}.interval.unit": "DAYS",
                "storage.location.template": f"{location}${{{PARTITION_COLUMN}}}/",
            },
            "PartitionKeys": [{"Name": PARTITION_COLUMN, "Type": "string"}],
            "StorageDescriptor": {
                "Columns": _glue_columns(columns),
                "Location": location,
                "InputFormat": _PARQUET_INPUT,
                "OutputFormat": _PARQUET_OUTPUT,
                "SerdeInfo": {"SerializationLibrary": _PARQUET_SERDE},
            },
        }

    # --- the view ---

    def _put_view(self, columns: TableColumns, *, create: bool) -> None:
        name = columns.table + CURRENT_SUFFIX
        sql = current_view_sql(columns)
        view = {
            "Name": name,
            "TableType": "VIRTUAL_VIEW",
            "Parameters": {"presto_view": "true", "comment": "Presto View"},
            "ViewOriginalText": presto_view_text(sql, ATHENA_CATALOG, self.database, columns),
            "ViewExpandedText": "/* Presto View */",
            "StorageDescriptor": {
                "Columns": _glue_columns(columns.columns),
                "SerdeInfo": {},
            },
        }
        if create:
            self._call(
                "CreateTable",
                columns.table,
                lambda: self.glue.create_table(DatabaseName=self.database, TableInput=view),
                exists_ok=True,
            )
        else:
            self._call(
                "UpdateTable",
                columns.table,
                lambda: self.glue.update_table(DatabaseName=self.database, TableInput=view),
            )

    # --- calls ---

    def _get(self, table: str) -> dict[str, Any] | None:
        try:
            with _glue_errors("GetTable", table):
                found: dict[str, Any] = self.glue.get_table(DatabaseName=self.database, Name=table)[
                    "Table"
                ]
                return found
        except CatalogError as e:
            if isinstance(e.__cause__, ClientError) and error_code(e.__cause__) == (
                "EntityNotFoundException"
            ):
                return None
            raise

    def _call(
        self, action: str, table: str, call: Callable[[], T], *, exists_ok: bool = False
    ) -> T | None:
        try:
            with _glue_errors(action, table):
                return call()
        except CatalogError as e:
            cause = e.__cause__
            if (
                exists_ok
                and isinstance(cause, ClientError)
                and error_code(cause) == "AlreadyExistsException"
            ):
                return None  # a concurrent commit created it: the same definition
            raise


def _glue_columns(columns: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    return [{"Name": name, "Type": glue} for name, glue in columns]


_READ_ONLY = (
    "DatabaseName",
    "CreateTime",
    "UpdateTime",
    "CreatedBy",
    "IsRegisteredWithLakeFormation",
    "CatalogId",
    "VersionId",
    "FederatedTable",
    "IsMultiDialectView",
)


def _as_input(table: dict[str, Any]) -> dict[str, Any]:
    """A GetTable result as an UpdateTable TableInput (the fields Glue accepts back)."""
    return {k: v for k, v in table.items() if k not in _READ_ONLY}


@contextmanager
def _glue_errors(action: str, table: str) -> Iterator[None]:
    try:
        yield
    except ClientError as e:
        code = error_code(e)
        if is_transient(code):
            raise LakeUnavailable(f"Glue {action} failed: {code}", table=table) from e
        raise CatalogError(f"Glue {action} failed: {code}", table=table) from e
    except BotoCoreError as e:
        raise LakeUnavailable(f"Glue {action} failed: {type(e).__name__}", table=table) from e
