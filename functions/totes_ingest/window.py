"""The run's end bound, computed from the database so that no late commit is skipped.

A row is safe to ingest below a bound ``E`` only if no transaction that could still
commit a row with ``last_updated < E`` is in flight. ToteSys sets ``last_updated = now()``,
the start time of the writing transaction, so the bound is the database clock capped by
the start of the oldest transaction still open in the database. Transactions that start
later take a later ``now()``, so they land in the next window.

A backend takes its transaction's timestamp a moment before it publishes it in
``pg_stat_activity``, so the clock is also pulled back by a small safety margin
(``END_TIME_SAFETY_MARGIN_SECONDS``, default 1 s) to cover a transaction that began just
before the bound was read.

When this role cannot see other sessions in ``pg_stat_activity`` (it lacks
``pg_read_all_stats``), the cap cannot be computed; the bound then trails the clock by a
configurable lag (``END_TIME_FALLBACK_LAG_SECONDS``), which must exceed the longest
writing transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pg8000.exceptions

from totes_ingest.db_connections import APPLICATION_NAME, as_source_error
from totes_ingest.errors import SourceUnavailable

_END_BOUND_SQL = """
SELECT clock_timestamp()::timestamp AS clock,
       min(a.xact_start)::timestamp AS oldest_open,
       count(*) FILTER (WHERE a.query = '<insufficient privilege>') AS hidden
FROM (SELECT 1) AS one
LEFT JOIN pg_stat_activity AS a
       ON a.datname = current_database()
      AND a.pid <> pg_backend_pid()
      AND (a.backend_type = 'client backend' OR a.query = '<insufficient privilege>')
      AND a.application_name IS DISTINCT FROM :ingest_application
      AND (a.xact_start IS NOT NULL OR a.query = '<insufficient privilege>')
"""


@dataclass(frozen=True)
class EndBound:
    """The bound and why it is where it is (for the run's log line)."""

    end_time: datetime
    clock: datetime
    held_back_by_open_transaction: bool
    fallback_lag_used: bool


def commit_safe_end_time(
    conn: Any, fallback_lag_seconds: float, safety_margin_seconds: float = 1.0
) -> EndBound:
    """The exclusive end bound of this run's windows, in the database's own time."""
    try:
        clock, oldest_open, hidden = conn.run(_END_BOUND_SQL, ingest_application=APPLICATION_NAME)[
            0
        ]
    except pg8000.exceptions.DatabaseError as e:
        raise as_source_error(e, "end bound query") from e
    except (pg8000.exceptions.InterfaceError, OSError) as e:
        raise SourceUnavailable(f"database connection lost: {type(e).__name__}") from e
    end = clock - timedelta(seconds=safety_margin_seconds)
    held_back = oldest_open is not None and oldest_open < end
    if held_back:
        end = oldest_open
    fallback = bool(hidden)
    if fallback:
        end = min(end, clock - timedelta(seconds=fallback_lag_seconds))
    return EndBound(
        end_time=end,
        clock=clock,
        held_back_by_open_transaction=held_back,
        fallback_lag_used=fallback,
    )
