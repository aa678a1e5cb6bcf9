"""ToteSys's application, busy: threads inserting and updating rows in transactions.

Each writer has its own connection and makes the business changes of
``totes_ingest.local.simulate`` (every row it touches gets ``last_updated = now()``, the
start of its transaction), one to three of them per transaction, sleeping 0-300 ms after
``START TRANSACTION`` and between statements, so transactions commit well after the time
they stamp on their rows; a few (``LONG_RATE``) pause for seconds, holding every run's
end bound back at their start, so that overlapping executions often share an end time.
One in ten is rolled back; one that fails (a deadlock between
writers, a foreign key to an id a rolled-back transaction never created) is rolled back
and counted as aborted.

The writers are of the kinds the end bound once could not see (``STYLES``, one each):
a plain session; a two-phase one (``PREPARE TRANSACTION``, then ``COMMIT PREPARED`` a
moment later: in between it is in no session's ``pg_stat_activity`` row); one with
``track_activities = off`` (its ``xact_start`` is never published); one whose
``application_name`` is the ingest's own.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pg8000.exceptions
import pg8000.native

from totes_ingest.db_connections import APPLICATION_NAME
from totes_ingest.local.dburl import connect
from totes_ingest.local.simulate import CHANGES, _Activity

STYLES = ("plain", "two-phase", "untracked", "named like the ingest")

MAX_PAUSE_S = 0.3
LONG_RATE = 0.03
LONG_PAUSE_S = (1.0, 3.0)
ROLLBACK_RATE = 0.1
# Long lock waits behind another writer's sleeping transaction end as aborts, not hangs.
STATEMENT_TIMEOUT_MS = 5000


@dataclass
class WriterStats:
    committed: int = 0
    rolled_back: int = 0
    aborted: int = 0
    versions: Counter[str] = field(default_factory=Counter)

    def add(self, other: WriterStats) -> None:
        self.committed += other.committed
        self.rolled_back += other.rolled_back
        self.aborted += other.aborted
        self.versions += other.versions


class Writers:
    """``count`` writer threads, seeded from ``seed``; :meth:`stop` joins and reports."""

    def __init__(self, settings: Mapping[str, Any], seed: int, count: int = len(STYLES)) -> None:
        self.settings = dict(settings)
        self.pids: set[int] = set()  # the writers' backends, which the session killer spares
        self._stop = threading.Event()
        self._stats = [WriterStats() for _ in range(count)]
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(
                target=self._write,
                args=(random.Random(f"{seed}/writer/{i}"), self._stats[i], STYLES[i % 4]),
                name=f"chaos-writer-{i}",
                daemon=True,
            )
            for i in range(count)
        ]

    def start(self, timeout_s: float = 20.0) -> None:
        """Start writing, once every writer is connected (so its pid is known)."""
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + timeout_s
        while len(self.pids) + len(self._errors) < len(self._threads):
            if time.monotonic() > deadline:
                raise RuntimeError("writers did not connect")
            time.sleep(0.01)

    def stop(self, timeout_s: float = 20.0) -> WriterStats:
        """Stop writing, wait for the threads (their connections closed) and sum up."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        if stuck:
            raise RuntimeError(f"writers did not stop: {stuck}")
        if self._errors:
            raise RuntimeError(f"{len(self._errors)} writer(s) failed") from self._errors[0]
        total = WriterStats()
        for stats in self._stats:
            total.add(stats)
        return total

    def stop_quietly(self, timeout_s: float = 20.0) -> None:
        """Stop and wait, reporting nothing (cleanup after a failure)."""
        self._stop.set()
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(timeout_s)

    def _write(self, rng: random.Random, stats: WriterStats, style: str) -> None:
        try:
            extra = {"application_name": APPLICATION_NAME} if style == STYLES[3] else {}
            conn = connect(self.settings, **extra)
            self.pids.add(conn.run("SELECT pg_backend_pid()")[0][0])
        except BaseException as e:
            self._errors.append(e)
            return
        try:
            conn.run(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            if style == "untracked":
                conn.run("SET track_activities = off")
            activity = _Activity(conn, rng)
            kinds, weights = zip(*CHANGES, strict=True)
            while not self._stop.is_set():
                changes = rng.choices(kinds, weights=weights, k=rng.choice((1, 1, 2, 3)))
                self._transaction(conn, activity, rng, changes, stats, style == "two-phase")
                time.sleep(rng.uniform(0.0, 0.05))
        except BaseException as e:
            self._errors.append(e)
        finally:
            conn.close()

    def _transaction(
        self,
        conn: pg8000.native.Connection,
        activity: _Activity,
        rng: random.Random,
        changes: list[Any],
        stats: WriterStats,
        two_phase: bool,
    ) -> None:
        conn.run("START TRANSACTION")
        try:
            versions: Counter[str] = Counter()
            long = rng.random() < LONG_RATE
            time.sleep(rng.uniform(*LONG_PAUSE_S) if long else rng.uniform(0.0, MAX_PAUSE_S))
            for change in changes:
                versions += change(activity)
                time.sleep(rng.uniform(0.0, MAX_PAUSE_S))
        except pg8000.exceptions.DatabaseError:
            conn.run("ROLLBACK")
            stats.aborted += 1
            return
        rollback = rng.random() < ROLLBACK_RATE
        if two_phase:
            gid = f"chaos-{threading.get_ident()}-{stats.committed + stats.rolled_back}"
            conn.run(f"PREPARE TRANSACTION '{gid}'")
            time.sleep(rng.uniform(0.0, MAX_PAUSE_S))
            conn.run(f"{'ROLLBACK' if rollback else 'COMMIT'} PREPARED '{gid}'")
        else:
            conn.run("ROLLBACK" if rollback else "COMMIT")
        if rollback:
            stats.rolled_back += 1
        else:
            stats.committed += 1
            stats.versions += versions
