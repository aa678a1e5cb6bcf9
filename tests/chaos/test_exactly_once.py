"""Exactly-once under chaos: busy writers, faults everywhere, overlapping executions.

While writer threads insert and update ToteSys rows in transactions of random length,
the real state machine (real ASL, real handlers, moto) runs round after round, one to
three executions at a time over the same tables, with faults injected at random points
(see ``faults.py``). Then the writers stop, a clean run catches up, and the lake must
hold every row's newest version exactly as the database has it, no row version twice,
every version inside its file's window.

Every decision comes from one seed, printed first; ``TOTES_CHAOS_SEED=<seed>`` replays
the same plan. The default test runs about 25 s of chaos; the ``slow`` one runs
``TOTES_CHAOS_SECONDS`` (default 240) and is meant for ``make chaos``.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.chaos.audit import LakeAudit, LogTally, TaskTally, audit_lake
from tests.chaos.faults import CALM, HEAVY, LIGHT, FaultPlan, Intensity, SessionKiller
from tests.chaos.machine import LocalDeployment
from tests.chaos.writers import Writers, WriterStats
from tests.conftest import _connect
from totes_ingest import config, lake, observability
from totes_ingest.format_time import parse_time
from totes_ingest.local.runner import ExecutionResult
from totes_ingest.local.seed import seed
from totes_ingest.local.totesys import TABLES

pytestmark = pytest.mark.e2e

DEFAULT_CHAOS_SECONDS = 25.0
LONG_CHAOS_SECONDS = 240.0
WRITERS = 3
# Generous: a round under heavy faults takes seconds (the ASL's retries back off), and
# an execution that really hangs is a failure, reported as TIMED_OUT.
EXECUTION_TIMEOUT_S = 180.0
FINAL_RUNS = 3


@pytest.fixture
def chaos_seed() -> int:
    value = os.environ.get("TOTES_CHAOS_SEED")
    return int(value) if value else random.SystemRandom().randrange(1, 10**9)


@pytest.fixture
def pipeline_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[LogTally]:
    """The pipeline's log lines counted instead of printed (thousands under chaos), no
    metrics printed, and the end bound's safety margin at its default."""
    monkeypatch.delenv(config.END_TIME_SAFETY_MARGIN_SECONDS, raising=False)
    # single_metric prints each metric whatever POWERTOOLS_METRICS_DISABLED says.
    monkeypatch.setattr(observability, "single_metric", lambda **_: contextlib.nullcontext())
    tally = LogTally()
    service_logger = observability.logger._logger
    saved = list(service_logger.handlers)
    service_logger.handlers = [tally]
    # The lake's child logger is not under the service's logger when the module is
    # imported without POWERTOOLS_SERVICE_NAME set (as here): count its lines too.
    lake_logger = lake.logger._logger
    detached = not lake_logger.name.startswith(f"{service_logger.name}.")
    if detached:
        lake_logger.addHandler(tally)
    try:
        yield tally
    finally:
        service_logger.handlers = saved
        if detached:
            lake_logger.removeHandler(tally)


@dataclass
class Rounds:
    """What the chaos phase did."""

    rounds: int = 0
    overlapping_rounds: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    timed_out: list[str] = field(default_factory=list)

    def add(self, results: list[ExecutionResult]) -> None:
        self.rounds += 1
        self.overlapping_rounds += len(results) > 1
        for result in results:
            self.statuses[result.status] = self.statuses.get(result.status, 0) + 1
            if result.status == "TIMED_OUT":
                self.timed_out.append(result.describe())


def _tables(rng: random.Random) -> list[str]:
    if rng.random() < 0.6:
        return list(TABLES)
    return rng.sample(TABLES, rng.randint(3, len(TABLES) - 1))


def _chaos_rounds(
    machine: LocalDeployment, plan: FaultPlan, rng: random.Random, seconds: float
) -> Rounds:
    """Rounds of one to three overlapping executions until ``seconds`` have passed."""
    done = Rounds()
    deadline = time.monotonic() + seconds
    intensities: list[Intensity] = [CALM, LIGHT, HEAVY]
    while time.monotonic() < deadline:
        # The first round ingests the whole seeded database, under heavy fire.
        plan.intensity = HEAVY if done.rounds == 0 else rng.choices(intensities, (1, 3, 3))[0]
        count = rng.choices((1, 2, 3), (5, 4, 1))[0]
        events = [{"tables_to_query": _tables(rng)} for _ in range(count)]
        delays = [0.0] + [rng.uniform(0.0, 1.5) for _ in range(count - 1)]
        done.add(machine.run_together(events, delays_s=delays, timeout_s=EXECUTION_TIMEOUT_S))
    return done


def _catch_up(machine: LocalDeployment, tally: TaskTally, conn: Any) -> list[ExecutionResult]:
    """Clean runs until one succeeds with an end bound past every row's last_updated."""
    newest = max(conn.run(f'SELECT max(last_updated) FROM "{table}"')[0][0] for table in TABLES)
    results: list[ExecutionResult] = []
    for _ in range(FINAL_RUNS):
        # A run's end bound trails the database clock by the safety margin.
        time.sleep(config.safety_margin_seconds() + 0.2)
        result = machine.run({"tables_to_query": list(TABLES)}, timeout_s=EXECUTION_TIMEOUT_S)
        results.append(result)
        end = tally.last_end_time
        if result.succeeded and end is not None and parse_time(end) > newest:
            break
    return results


@dataclass
class ChaosReport:
    """Everything a chaos run did and found."""

    seed: int
    seconds: float
    seeded_rows: int
    rounds: Rounds
    final: list[ExecutionResult]
    writers: WriterStats
    plan: FaultPlan
    tasks: TaskTally
    logs: LogTally
    audit: LakeAudit
    elapsed_s: float

    def summary(self) -> str:
        rounds, tasks, audit, writers = self.rounds, self.tasks, self.audit, self.writers
        statuses = ", ".join(f"{k.lower()} {n}" for k, n in sorted(rounds.statuses.items()))
        finals = ", ".join(result.status.lower() for result in self.final)
        leftovers = len(audit.staged_leftovers)
        unexplained = len(audit.unexplained_leftovers(self.plan.refused_deletes))
        return "\n".join(
            [
                f"chaos seed {self.seed}: {self.seconds:g} s of chaos, {self.elapsed_s:.1f} s "
                "in all",
                f"rounds {rounds.rounds} ({rounds.overlapping_rounds} with overlapping "
                f"executions); executions {statuses}; final clean runs {finals}",
                f"writers: transactions committed {writers.committed}, rolled back "
                f"{writers.rolled_back}, aborted {writers.aborted}; row versions committed "
                f"{sum(writers.versions.values())}",
                f"faults injected {sum(self.plan.injected.values())}:",
                *(f"  {n:5d}  {kind}" for kind, n in sorted(self.plan.injected.items())),
                f"task invocations {sum(tasks.invocations.values())}; failures by step and error:",
                *(f"  {n:5d}  {kind}" for kind, n in sorted(tasks.errors.items())),
                f"commits reported written {tasks.written} ({tasks.rows_written} row "
                f"versions); tables skipped because of overlaps: claim lost {tasks.skipped}, "
                f"watermark already past the run's end {tasks.overtaken}",
                "pipeline warnings and criticals:",
                *(f"  {n:5d}  {message}" for message, n in sorted(self.logs.messages.items())),
                f"lake: {audit.files} files, {audit.versions} row versions ({self.seeded_rows} "
                f"seeded, {audit.versions - self.seeded_rows} written since); staged objects "
                f"of uncommitted windows {audit.staged_orphans}",
                f"lost {len(audit.lost)}, duplicated {len(audit.duplicated)}, misplaced "
                f"{len(audit.misplaced)}, chain breaks {len(audit.chain_breaks)}, staged "
                f"leftovers of committed windows {leftovers} ({unexplained} unexplained)",
            ]
        )

    def problems(self) -> dict[str, list[str]]:
        found = {
            "lost": self.audit.lost,
            "duplicated": self.audit.duplicated,
            "misplaced": self.audit.misplaced,
            "chain breaks": self.audit.chain_breaks,
            "unexplained staged leftovers": self.audit.unexplained_leftovers(
                self.plan.refused_deletes
            ),
        }
        return {name: items for name, items in found.items() if items}


def run_chaos(
    settings: dict[str, Any],
    s3: Any,
    logs: LogTally,
    monkeypatch: pytest.MonkeyPatch,
    seed_value: int,
    seconds: float,
) -> ChaosReport:
    """Seed, write, run under faults for ``seconds``, catch up cleanly, audit the lake."""
    began = time.monotonic()
    rng = random.Random(seed_value)
    plan = FaultPlan(seed_value)
    plan.install(monkeypatch)
    tasks = TaskTally()
    writers = Writers(settings, seed_value, count=WRITERS)
    killer = SessionKiller(settings, plan)
    conn = _connect(settings)
    try:
        seeded_rows = sum(seed(conn, scale=1).values())
        with LocalDeployment(on_task=tasks) as machine:
            writers.start()
            killer.start()
            plan.enabled = True
            try:
                rounds = _chaos_rounds(machine, plan, rng, seconds)
            finally:
                plan.enabled = False
                plan.intensity = CALM
                killer.stop()
                written = writers.stop()
            final = _catch_up(machine, tasks, conn)
        audit = audit_lake(conn, s3, TABLES)
    finally:
        killer.stop_quietly()
        writers.stop_quietly()
        conn.close()
    return ChaosReport(
        seed=seed_value,
        seconds=seconds,
        seeded_rows=seeded_rows,
        rounds=rounds,
        final=final,
        writers=written,
        plan=plan,
        tasks=tasks,
        logs=logs,
        audit=audit,
        elapsed_s=time.monotonic() - began,
    )


def check_exactly_once(
    settings: dict[str, Any],
    s3: Any,
    logs: LogTally,
    monkeypatch: pytest.MonkeyPatch,
    seed_value: int,
    seconds: float,
) -> None:
    replay = f"(replay with TOTES_CHAOS_SEED={seed_value})"
    print(f"\nchaos seed {seed_value} {replay}")
    # GIVEN a seeded ToteSys, busy writers, faults switched on
    # WHEN executions run, alone and overlapping, then clean runs catch up
    report = run_chaos(settings, s3, logs, monkeypatch, seed_value, seconds)
    print(report.summary())
    # THEN every execution ended, the last clean run succeeded...
    assert not report.rounds.timed_out, f"executions hung {replay}:\n" + "\n".join(
        report.rounds.timed_out
    )
    assert report.final[-1].succeeded, (
        f"the clean run failed {replay}:\n{report.final[-1].describe()}"
    )
    assert sum(report.plan.injected.values()) > 0, "no fault was injected"
    assert report.writers.committed > 0, "the writers committed nothing"
    # ... and the lake holds each row's newest version, no version twice, all in place
    found = report.problems()
    assert not found, (
        f"{', '.join(f'{len(v)} {k}' for k, v in found.items())} {replay}:\n"
        + "\n".join(item for items in found.values() for item in items[:50])
        + "\nlast faults injected:\n"
        + "\n".join(report.plan.journal[-200:])
    )


def test_no_row_version_is_lost_or_duplicated_under_chaos(
    db_secret: dict[str, Any],
    s3: Any,
    pipeline_logs: LogTally,
    monkeypatch: pytest.MonkeyPatch,
    chaos_seed: int,
) -> None:
    check_exactly_once(db_secret, s3, pipeline_logs, monkeypatch, chaos_seed, DEFAULT_CHAOS_SECONDS)


@pytest.mark.slow
def test_no_row_version_is_lost_or_duplicated_under_long_chaos(
    db_secret: dict[str, Any],
    s3: Any,
    pipeline_logs: LogTally,
    monkeypatch: pytest.MonkeyPatch,
    chaos_seed: int,
) -> None:
    seconds = float(os.environ.get("TOTES_CHAOS_SECONDS", LONG_CHAOS_SECONDS))
    check_exactly_once(db_secret, s3, pipeline_logs, monkeypatch, chaos_seed, seconds)
