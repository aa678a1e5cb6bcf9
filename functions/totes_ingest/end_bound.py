"""The run's end bound, computed from the database so that no late commit is skipped.

A row is safe to ingest below a bound ``E`` only if no transaction that could still
commit a row with ``last_updated < E`` is in flight. ToteSys sets ``last_updated = now()``,
the start time of the writing transaction, so the bound is the database clock capped by
the start of the oldest transaction still open. The bound is an instant (UTC), whatever
the zone of either session.

Which transactions are open comes from ``pg_locks``: every transaction holds the lock on
its own virtual transaction id from its first moment, whether or not it has written yet,
whatever its ``application_name``, its ``track_activities`` setting or its backend type
(client, background or logical replication worker). Its start comes from
``pg_stat_activity.xact_start``. Only what provably cannot write below the bound is left
out: this session itself, autovacuum, a transaction that ends while the bound is
computed (committed, it is in every later snapshot), and a backend still connecting
whose transaction began after the clock was read (its lock is absent from the pg_locks
read before the clock, its row from ``pg_stat_activity``, read afresh after it: every
transaction of its client comes later still), or connecting to another database (it
holds or awaits its lock on that database, which a DROP DATABASE or a rename there can
keep it waiting for). A connecting backend's startup transaction open before the clock
is hidden: a ``session_preload_libraries`` hook may write in it, stamped with its start.
Counting every connecting backend as hidden sent one bound in 25 back by the fallback
lag while other clients connected. Then:

- a transaction whose start is hidden (another role's session without
  ``pg_read_all_stats``, ``track_activities = off``, a backend still connecting) and that
  outlasts ``HIDDEN_WAIT_SECONDS`` (0.1 s; a connecting one, ``STARTUP_WAIT_SECONDS``,
  1 s) pulls the bound back to the clock minus
  ``END_TIME_FALLBACK_LAG_SECONDS``, which must exceed its duration;
- a prepared (two-phase) transaction of this database has left its session but not
  committed, and its start is unknown: every table is held at its watermark until it ends
  (exact: it started after the bound of every earlier run, which it held back or
  preceded);
- a hot standby cannot see its primary's transactions at all: refused, unless
  ``ALLOW_HOT_STANDBY`` is set, when the bound is the last replayed commit minus the
  fallback lag.

A backend takes its transaction's timestamp a moment before it shows in ``pg_locks``, so
the clock is read first and pulled back by ``END_TIME_SAFETY_MARGIN_SECONDS`` (1 s).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from totes_ingest.db_errors import source_errors
from totes_ingest.errors import SourceError, SourceUnavailable

# Each transaction's own virtual transaction id lock (l: pg_locks), but this session's.
_VXID_LOCK = """l.locktype = 'virtualxid' AND l.granted AND l.mode = 'ExclusiveLock'
  AND l.virtualxid = l.virtualtransaction AND l.pid <> pg_backend_pid()"""
# With the clock, the transactions open before it is read (the aggregate in FROM is done
# before the row's clock_timestamp()). pg_stat_clear_snapshot(): the next statement reads
# pg_stat_activity afresh, after the clock, even inside a transaction that read it.
_CLOCK_SQL = f"""
SELECT clock_timestamp(), pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN pg_last_xact_replay_timestamp() END, early.vxids
FROM (SELECT coalesce(array_agg(l.virtualtransaction), '{{}}')
      FROM pg_catalog.pg_locks AS l WHERE {_VXID_LOCK}) AS early(vxids),
     pg_catalog.pg_stat_clear_snapshot()
"""  # nosec B608 - built of the constants above, no input
_OPEN_TRANSACTIONS_SQL = f"""
SELECT l.pid, a.xact_start, coalesce(a.application_name, ''), coalesce(a.state, ''),
       coalesce(a.backend_type, ''), a.usename::text, l.virtualtransaction, a.pid IS NULL,
       a.pid IS NULL AND EXISTS (
         SELECT FROM pg_catalog.pg_locks AS d
         WHERE d.pid = l.pid AND d.locktype = 'object' AND d.objsubid = 0
           AND d.classid = 'pg_catalog.pg_database'::regclass
           AND d.objid <> (SELECT oid FROM pg_catalog.pg_database
                           WHERE datname = current_database()))
FROM pg_catalog.pg_locks AS l
LEFT JOIN pg_catalog.pg_stat_activity AS a ON a.pid = l.pid
WHERE {_VXID_LOCK}
  AND (a.datname IS NULL OR a.datname = current_database())
  AND coalesce(a.backend_type, '') NOT IN ('autovacuum worker', 'autovacuum launcher')
"""  # nosec B608 - built of the constants above, no input
_STILL_OPEN_SQL = f"""
SELECT coalesce(array_agg(l.virtualtransaction), '{{}}') FROM pg_catalog.pg_locks AS l
WHERE {_VXID_LOCK} AND l.virtualtransaction = ANY(CAST(:vxids AS text[]))
"""  # nosec B608 - built of the constants above, no input
# How long a transaction whose start is hidden is waited for before the bound falls back;
# a connecting backend's (its login), longer: a trust login takes milliseconds, a
# password one over a WAN round trips. A client that stalls its login for longer (up to
# the server's authentication_timeout) pulls the bound back: lag, never a loss.
HIDDEN_WAIT_SECONDS = 0.1
STARTUP_WAIT_SECONDS = 1.0
_PREPARED_SQL = """
SELECT gid, prepared, owner::text FROM pg_catalog.pg_prepared_xacts
WHERE database = current_database() ORDER BY prepared
"""


# The state of a backend that was connecting (its startup transaction open: the
# authentication, session_preload_libraries) before the clock was read.
_STARTING = "starting"


@dataclass(frozen=True)
class OpenTransaction:
    """A transaction the bound had to account for (never its query text)."""

    pid: int
    started: datetime | None  # None: its start is not visible to this role
    application_name: str
    state: str
    backend_type: str
    user: str | None
    vxid: str = ""

    def describe(self, clock: datetime) -> dict[str, Any]:
        open_for = None if self.started is None else (clock - self.started).total_seconds()
        return {
            "pid": self.pid,
            "application_name": self.application_name,
            "state": self.state or "not visible",
            "backend_type": self.backend_type,
            "user": self.user,
            "open_seconds": None if open_for is None else round(open_for, 3),
        }


@dataclass(frozen=True)
class PreparedTransaction:
    gid: str
    prepared: datetime
    owner: str


@dataclass(frozen=True)
class EndBound:
    """The bound (naive UTC) and why it is where it is (for the run's log lines)."""

    end_time: datetime
    clock: datetime
    held_back_by: OpenTransaction | None = None
    fallback_lag_used: bool = False
    invisible: tuple[OpenTransaction, ...] = ()
    prepared: tuple[PreparedTransaction, ...] = field(default_factory=tuple)
    standby: bool = False

    @property
    def held_back_by_open_transaction(self) -> bool:
        return self.held_back_by is not None

    @property
    def hold_at_watermark(self) -> str | None:
        """Why no table may pass its watermark in this run (None: they may)."""
        if not self.prepared:
            return None
        oldest = self.prepared[0]
        return (
            f"prepared transaction {oldest.gid!r} of {oldest.owner} "
            f"(prepared at {oldest.prepared:%Y-%m-%d %H:%M:%S} UTC) has not ended"
        )

    @property
    def lag_seconds(self) -> float:
        return (self.clock - self.end_time).total_seconds()


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def commit_safe_end_time(
    conn: Any,
    fallback_lag_seconds: float,
    safety_margin_seconds: float = 1.0,
    *,
    allow_hot_standby: bool = False,
) -> EndBound:
    """The exclusive end bound of this run's windows: an instant, naive UTC."""
    with source_errors("end bound query"):
        ((clock_tz, in_recovery, replayed, early),) = conn.run(_CLOCK_SQL)
        clock = _utc(clock_tz)
        fallback = clock - timedelta(seconds=fallback_lag_seconds)
        if in_recovery:
            return _standby_bound(clock, replayed, fallback_lag_seconds, allow_hot_standby)
        transactions = []
        for pid, start, app, state, kind, user, vxid, unreported, elsewhere in conn.run(
            _OPEN_TRANSACTIONS_SQL
        ):
            if unreported:
                # Not in pg_stat_activity yet: a backend still connecting. One whose
                # transaction began after the clock was read is left out: every
                # transaction of its client comes later still; so is one that holds or
                # awaits the lock on another database (its own, taken as it connects:
                # it cannot write here). One open before it may be a
                # session_preload_libraries hook's that writes: hidden.
                if vxid not in early or elsewhere:
                    continue
                state = _STARTING
            started = None if start is None else _utc(start)
            transactions.append(OpenTransaction(pid, started, app, state, kind, user, vxid))
        hidden = {t.vxid for t in transactions if t.started is None}
        if hidden:
            # A hidden transaction that ends while it is waited for committed before the
            # extract's snapshot, or rolled back: it does not hold the bound.
            still = _still_open(conn, hidden, HIDDEN_WAIT_SECONDS)
            starting = {t.vxid for t in transactions if t.state == _STARTING} & still
            if starting:  # a login: longer (a password one over a WAN, say)
                still -= starting - _still_open(conn, starting, STARTUP_WAIT_SECONDS)
            transactions = [t for t in transactions if t.started is not None or t.vxid in still]
        prepared = tuple(
            PreparedTransaction(gid, _utc(at), owner) for gid, at, owner in conn.run(_PREPARED_SQL)
        )
    end = clock - timedelta(seconds=safety_margin_seconds)
    visible = [t for t in transactions if t.started is not None]
    invisible = tuple(t for t in transactions if t.started is None)
    oldest = min(visible, key=lambda t: t.started or clock, default=None)
    held_back_by = None
    if oldest is not None and oldest.started is not None and oldest.started < end:
        end, held_back_by = oldest.started, oldest
    if invisible and fallback < end:
        end = fallback
    return EndBound(
        end_time=end,
        clock=clock,
        held_back_by=held_back_by,
        fallback_lag_used=bool(invisible),
        invisible=invisible,
        prepared=prepared,
    )


def _still_open(conn: Any, vxids: set[str], wait_seconds: float) -> set[str]:
    """Those of ``vxids`` still open after at most ``wait_seconds``."""
    deadline = time.monotonic() + wait_seconds
    while True:
        ((still,),) = conn.run(_STILL_OPEN_SQL, vxids=sorted(vxids))
        if not still or time.monotonic() >= deadline:
            return set(still)
        time.sleep(0.005)


def _standby_bound(
    clock: datetime, replayed: datetime | None, lag_seconds: float, allowed: bool
) -> EndBound:
    if not allowed:
        raise SourceError(
            "the database is a hot standby: its primary's open transactions are invisible "
            "here, so no end bound is safe; point DB_SECRET_NAME at the primary, or set "
            "ALLOW_HOT_STANDBY=true to bound windows by the last replayed commit minus "
            "END_TIME_FALLBACK_LAG_SECONDS"
        )
    if replayed is None:
        raise SourceUnavailable("the hot standby has not replayed any transaction yet")
    end = min(clock, _utc(replayed)) - timedelta(seconds=lag_seconds)
    return EndBound(end_time=end, clock=clock, fallback_lag_used=True, standby=True)
