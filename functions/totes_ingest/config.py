"""Configuration names and defaults: the one place the environment is read from.

Required settings fail loudly at use (``os.environ[...]``); optional ones have
documented defaults here, never fake values.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Final, Literal

INGEST_BUCKET: Final = "INGEST_BUCKET"
DB_SECRET_NAME: Final = "DB_SECRET_NAME"  # noqa: S105 - a variable name, not a secret
# libpq-style: "require" (default: always encrypted), "verify-full" (encrypted, and the
# server certificate and host name checked), "disable" (local runs only).
DB_SSL_MODE: Final = "DB_SSL_MODE"
# PEM bundle of the CAs that verify-full trusts (RDS: its global bundle), a path relative
# to the code's root (/var/task in Lambda) or absolute; unset: the system's CAs.
DB_SSL_ROOT_CERT: Final = "DB_SSL_ROOT_CERT"
# Seconds to wait for each step of connecting (TCP, TLS, login); queries are not bounded
# by it (statement_timeout is).
DB_CONNECT_TIMEOUT_SECONDS: Final = "DB_CONNECT_TIMEOUT_SECONDS"
# Seconds subtracted from the database clock when this role cannot see other sessions'
# transactions in pg_stat_activity (see window.commit_safe_end_time).
END_TIME_FALLBACK_LAG_SECONDS: Final = "END_TIME_FALLBACK_LAG_SECONDS"
# Seconds the end bound trails the database clock even when every session is visible.
END_TIME_SAFETY_MARGIN_SECONDS: Final = "END_TIME_SAFETY_MARGIN_SECONDS"
# Rows per Parquet row group: the unit of streaming and so the bound on memory.
ROW_GROUP_ROWS: Final = "ROW_GROUP_ROWS"
STATEMENT_TIMEOUT_MS: Final = "STATEMENT_TIMEOUT_MS"
# Connections one extract reads a table with, each a disjoint ctid range of its blocks in
# one exported snapshot (extract.py); 1: one connection. More pays only with spare cores
# on both ends (benchmarks/RESULTS.md).
EXTRACT_CONNECTIONS: Final = "EXTRACT_CONNECTIONS"
# Tables ingested at once: StartRun hands it to the Map (MaxConcurrencyPath).
MAX_CONCURRENCY: Final = "MAX_CONCURRENCY"
# The most rows one window holds: a longer pending range is cut at cursor values into
# consecutive sub-windows (window_plan.py). One cursor value is never split: a value held
# by more rows is a window of its own, above the bound (WARNING, OversizedWindowRows).
MAX_WINDOW_ROWS: Final = "MAX_WINDOW_ROWS"
# The extract's rate a StageWindow child assumes (rows a second) to stage within its time
# budget: a sub-window holding more rows than fit is staged shorter, the rest handed on.
EXTRACT_ROWS_PER_SECOND: Final = "EXTRACT_ROWS_PER_SECOND"
# Sub-windows of one table staged at once by the Distributed Map (its MaxConcurrencyPath).
STAGE_CONCURRENCY: Final = "STAGE_CONCURRENCY"
# Seconds a step may spend before it hands the rest on (and never past the function's
# timeout less STEP_TIME_MARGIN): QueryToParquet's planning stops cutting (the run's chain
# ends at the last cut, the next run goes on), a StageWindow child stages what fits (at
# EXTRACT_ROWS_PER_SECOND), CommitWindows stops committing (the state machine invokes it
# again for the rest).
STEP_TIME_BUDGET_SECONDS: Final = "STEP_TIME_BUDGET_SECONDS"

# The schema every table name is resolved in (never the search path).
SOURCE_SCHEMA: Final = "SOURCE_SCHEMA"
# The zone whose wall-clock time `timestamp without time zone` cursors hold (the zone the
# writers' sessions run in); default: the database's own TimeZone setting.
SOURCE_TIMEZONE: Final = "SOURCE_TIMEZONE"
# Seconds below each window's start re-read and deduplicated against the lake (0: off).
REREAD_LAG_SECONDS: Final = "REREAD_LAG_SECONDS"
# "true": accept a hot standby as the source (bound: last replayed commit minus the
# fallback lag); otherwise a standby is refused.
ALLOW_HOT_STANDBY: Final = "ALLOW_HOT_STANDBY"
# An open transaction holding the end bound back longer than this is named in a WARNING.
STALL_WARNING_SECONDS: Final = "STALL_WARNING_SECONDS"
# The audit: how far back (in days of the cursor) a horizon audit compares the source
# with the lake, and how many primary-key values one partition of its key space spans
# (the unit of its memory).
AUDIT_HORIZON_DAYS: Final = "AUDIT_HORIZON_DAYS"
AUDIT_PARTITION_KEYS: Final = "AUDIT_PARTITION_KEYS"
# "false": the audit in AWS reports only (writes no repair object or tombstone); default
# "true": it repairs. The local command's --no-repair is the same switch.
AUDIT_REPAIR: Final = "AUDIT_REPAIR"
# Seconds an audit's lease on a table lasts (audit_lease.py): above the audit function's
# timeout, so an expired lease's holder can no longer be running.
AUDIT_LEASE_SECONDS: Final = "AUDIT_LEASE_SECONDS"

# The type mapping of the Parquet files (pg_types): "portable" (default: every engine
# reads every column, Athena/Glue can declare it) or "extension" (Arrow's uuid and json
# extension types, decimal256, time64: opt-in, for pyarrow-only readers).
PARQUET_TYPE_PROFILE: Final = "PARQUET_TYPE_PROFILE"
# The Glue database the commit step keeps each table's Glue table (and views) in; unset:
# no catalog is kept (local runs keep a DuckDB file instead).
GLUE_DATABASE: Final = "GLUE_DATABASE"

TypeProfile = Literal["portable", "extension"]
TYPE_PROFILES: Final[tuple[TypeProfile, ...]] = ("portable", "extension")
DEFAULT_TYPE_PROFILE: Final[TypeProfile] = "portable"

DEFAULT_SSL_MODE: Final = "require"
DEFAULT_CONNECT_TIMEOUT_SECONDS: Final = 10.0
DEFAULT_SOURCE_SCHEMA: Final = "public"
DEFAULT_REREAD_LAG_SECONDS: Final = 300.0
DEFAULT_STALL_WARNING_SECONDS: Final = 60.0
DEFAULT_FALLBACK_LAG_SECONDS: Final = 300.0
DEFAULT_SAFETY_MARGIN_SECONDS: Final = 1.0
DEFAULT_ROW_GROUP_ROWS: Final = 131_072
# A row group is also cut when its Arrow data passes this (about 1,000 rows of 16 KB), so
# wide rows bound memory too.
DEFAULT_ROW_GROUP_BYTES: Final = 16 << 20
DEFAULT_STATEMENT_TIMEOUT_MS: Final = 600_000
DEFAULT_EXTRACT_CONNECTIONS: Final = 1
DEFAULT_MAX_CONCURRENCY: Final = 4
# About 10-20 s of extract at the rate measured here (0.5-1M rows/s, docs/deploy.md) and
# 115 MB of sales_order Parquet in /tmp: far inside the 900 s timeout and 2 GB of /tmp.
DEFAULT_MAX_WINDOW_ROWS: Final = 10_000_000
DEFAULT_STEP_TIME_BUDGET_SECONDS: Final = 600.0
DEFAULT_STAGE_CONCURRENCY: Final = 4
# A third of the 1.5M rows/s measured on 2 vCPUs (make bench-scale): a Lambda has fewer.
DEFAULT_EXTRACT_ROWS_PER_SECOND: Final = 500_000.0
# What a step keeps, below its function's timeout, to return its hand-over.
STEP_TIME_MARGIN_SECONDS: Final = 30.0
DEFAULT_AUDIT_HORIZON_DAYS: Final = 7.0
DEFAULT_AUDIT_PARTITION_KEYS: Final = 1_000_000
DEFAULT_AUDIT_LEASE_SECONDS: Final = 960.0  # the audit function's 900 s timeout, and a minute

# The folder holding the totes_ingest package: /var/task in Lambda, functions/ here.
CODE_ROOT: Final = Path(__file__).resolve().parents[1]

STAGING_PREFIX: Final = "_staging/"
CLAIMS_PREFIX: Final = "_claims/"
TOMBSTONES_PREFIX: Final = "_tombstones/"


def ingest_bucket() -> str:
    return os.environ[INGEST_BUCKET]


def db_secret_name() -> str:
    return os.environ[DB_SECRET_NAME]


def ssl_mode() -> str:
    mode = os.environ.get(DB_SSL_MODE, DEFAULT_SSL_MODE)
    if mode not in ("require", "verify-full", "disable"):
        raise ValueError(f"{DB_SSL_MODE} must be require, verify-full or disable, not {mode!r}")
    return mode


def ssl_root_cert() -> str | None:
    value = os.environ.get(DB_SSL_ROOT_CERT, "")
    if not value:
        return None
    return str(CODE_ROOT / value)  # an absolute value stays as it is


def connect_timeout_seconds() -> float:
    return float(os.environ.get(DB_CONNECT_TIMEOUT_SECONDS, DEFAULT_CONNECT_TIMEOUT_SECONDS))


def fallback_lag_seconds() -> float:
    return float(os.environ.get(END_TIME_FALLBACK_LAG_SECONDS, DEFAULT_FALLBACK_LAG_SECONDS))


def safety_margin_seconds() -> float:
    """0 only where nothing writes beside the ingest (tests): the margin covers a writer's
    timestamp taken a moment before its transaction shows in pg_locks."""
    value = float(os.environ.get(END_TIME_SAFETY_MARGIN_SECONDS, DEFAULT_SAFETY_MARGIN_SECONDS))
    if not value >= 0:
        raise ValueError(f"{END_TIME_SAFETY_MARGIN_SECONDS} must not be negative, not {value}")
    return value


def row_group_rows() -> int:
    return int(os.environ.get(ROW_GROUP_ROWS, DEFAULT_ROW_GROUP_ROWS))


def statement_timeout_ms() -> int:
    return int(os.environ.get(STATEMENT_TIMEOUT_MS, DEFAULT_STATEMENT_TIMEOUT_MS))


def extract_connections() -> int:
    value = int(os.environ.get(EXTRACT_CONNECTIONS, DEFAULT_EXTRACT_CONNECTIONS))
    if value < 1:
        raise ValueError(f"{EXTRACT_CONNECTIONS} must be at least 1, not {value}")
    return value


def max_concurrency() -> int:
    value = int(os.environ.get(MAX_CONCURRENCY, DEFAULT_MAX_CONCURRENCY))
    if value < 1:
        raise ValueError(f"{MAX_CONCURRENCY} must be at least 1, not {value}")
    return value


def source_schema() -> str:
    return os.environ.get(SOURCE_SCHEMA, DEFAULT_SOURCE_SCHEMA)


def source_timezone() -> str | None:
    """The configured source zone, or None: use the database's TimeZone."""
    return os.environ.get(SOURCE_TIMEZONE) or None


def reread_lag_seconds() -> float:
    value = float(os.environ.get(REREAD_LAG_SECONDS, DEFAULT_REREAD_LAG_SECONDS))
    if value < 0:
        raise ValueError(f"{REREAD_LAG_SECONDS} must not be negative, not {value}")
    return value


def allow_hot_standby() -> bool:
    return os.environ.get(ALLOW_HOT_STANDBY, "").lower() in ("1", "true", "yes")


def stall_warning_seconds() -> float:
    return float(os.environ.get(STALL_WARNING_SECONDS, DEFAULT_STALL_WARNING_SECONDS))


def max_window_rows() -> int:
    value = int(os.environ.get(MAX_WINDOW_ROWS, DEFAULT_MAX_WINDOW_ROWS))
    if value < 1:
        raise ValueError(f"{MAX_WINDOW_ROWS} must be at least 1, not {value}")
    return value


def extract_rows_per_second() -> float:
    value = float(os.environ.get(EXTRACT_ROWS_PER_SECOND, DEFAULT_EXTRACT_ROWS_PER_SECOND))
    if not value > 0:
        raise ValueError(f"{EXTRACT_ROWS_PER_SECOND} must be positive, not {value}")
    return value


def stage_concurrency() -> int:
    value = int(os.environ.get(STAGE_CONCURRENCY, DEFAULT_STAGE_CONCURRENCY))
    if not 1 <= value <= 10_000:  # a Distributed Map's most
        raise ValueError(f"{STAGE_CONCURRENCY} must be 1 to 10000, not {value}")
    return value


def step_time_budget_seconds() -> float:
    value = float(os.environ.get(STEP_TIME_BUDGET_SECONDS, DEFAULT_STEP_TIME_BUDGET_SECONDS))
    if value <= 0:
        raise ValueError(f"{STEP_TIME_BUDGET_SECONDS} must be positive, not {value}")
    return value


def step_deadline(remaining_ms: int) -> float:
    """The ``time.monotonic()`` instant a step hands over by: its time budget, or the
    function's remaining time (``context.get_remaining_time_in_millis()``) less a margin
    for the hand-over itself, whichever comes first."""
    remaining = max(remaining_ms / 1000 - STEP_TIME_MARGIN_SECONDS, 0.0)
    return time.monotonic() + min(step_time_budget_seconds(), remaining)


def audit_horizon_days() -> float:
    value = float(os.environ.get(AUDIT_HORIZON_DAYS, DEFAULT_AUDIT_HORIZON_DAYS))
    if not value > 0:
        raise ValueError(f"{AUDIT_HORIZON_DAYS} must be positive, not {value}")
    return value


def audit_partition_keys() -> int:
    value = int(os.environ.get(AUDIT_PARTITION_KEYS, DEFAULT_AUDIT_PARTITION_KEYS))
    if value < 1:
        raise ValueError(f"{AUDIT_PARTITION_KEYS} must be at least 1, not {value}")
    return value


def audit_repair() -> bool:
    value = os.environ.get(AUDIT_REPAIR, "true").lower()
    if value not in ("true", "false"):
        raise ValueError(f"{AUDIT_REPAIR} must be true or false, not {value!r}")
    return value == "true"


def audit_lease_seconds() -> float:
    value = float(os.environ.get(AUDIT_LEASE_SECONDS, DEFAULT_AUDIT_LEASE_SECONDS))
    if not value > 0:
        raise ValueError(f"{AUDIT_LEASE_SECONDS} must be positive, not {value}")
    return value


def type_profile() -> TypeProfile:
    value = os.environ.get(PARQUET_TYPE_PROFILE) or DEFAULT_TYPE_PROFILE
    for profile in TYPE_PROFILES:
        if value == profile:
            return profile
    raise ValueError(f"{PARQUET_TYPE_PROFILE} must be portable or extension, not {value!r}")


def glue_database() -> str | None:
    """The Glue database to keep the tables' catalog in; None: keep none."""
    return os.environ.get(GLUE_DATABASE) or None
