"""One chaos run: seed ToteSys, start the writers, run executions under faults, stop,
catch up with clean runs, audit the lake.

Rounds follow each other until the chaos period is over: each round picks an intensity
(calm, light, heavy; the first is heavy and ingests the whole seeded database), one to
three executions (half the rounds overlap), their tables (all, or a random subset)
and how far apart they start (0-1.5 s). Everything is drawn from the seed.

With :class:`SmallWindows`, each round also draws MAX_WINDOW_ROWS (small enough that the
busy tables' few hundred new row versions are cut into several sub-windows each round:
plans, the StageWindows map, CommitWindows) and, now and then, a step time budget so
short that planning stops early (the plan ends at its last cut) and CommitWindows hands
over after a sub-window or two (``partial``). The clean runs at the end use the first
round's bound and no budget.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from tests.chaos.audit import LakeAudit, LogTally, TaskTally, audit_lake
from tests.chaos.faults import CALM, HEAVY, LIGHT, FaultPlan, Intensity, SessionKiller
from tests.chaos.machine import LocalDeployment
from tests.chaos.writers import STYLES, Writers, WriterStats
from tests.clock import fall_back_zone
from tests.conftest import BUCKET
from totes_ingest import config, pipeline
from totes_ingest.audit import AuditSettings, TableAudit, audit_tables
from totes_ingest.format_time import parse_time
from totes_ingest.lake import Lake
from totes_ingest.local.dburl import connect
from totes_ingest.local.runner import ExecutionResult
from totes_ingest.local.seed import seed
from totes_ingest.local.totesys import TABLES

# One writer of each kind the end bound once missed (see writers.STYLES).
WRITERS = len(STYLES)
# Generous: a round under heavy faults takes seconds (the ASL's retries back off), and
# an execution that really hangs is a failure, reported as TIMED_OUT.
EXECUTION_TIMEOUT_S = 180.0
FINAL_RUNS = 3


_DEFAULT_PLAN_WINDOWS = pipeline.MAX_PLAN_WINDOWS


@dataclass(frozen=True)
class SmallWindows:
    """MAX_WINDOW_ROWS and STEP_TIME_BUDGET_SECONDS of the rounds (see the module)."""

    first_round_rows: int = 2500  # the seeded tables: up to 6 sub-windows each
    round_rows: tuple[int, ...] = (3, 8, 20)
    short_budget_s: float = 0.05
    short_budget_rate: float = 0.5
    # A backlog left by failed rounds, cut at a few rows a window, would make thousands
    # of sub-windows: the rounds' plans stop at this many (the rest is the next run's).
    max_plan_windows: int = 40

    def apply(self, rng: random.Random | None, first: bool = False) -> None:
        """Set the handlers' variables for the next round (``rng`` None: the clean runs;
        the caller restores ``pipeline.MAX_PLAN_WINDOWS`` after the test)."""
        rows = self.first_round_rows if first or rng is None else rng.choice(self.round_rows)
        os.environ[config.MAX_WINDOW_ROWS] = str(rows)
        pipeline.MAX_PLAN_WINDOWS = self.max_plan_windows if rng else _DEFAULT_PLAN_WINDOWS
        short = rng is not None and rng.random() < self.short_budget_rate
        budget = self.short_budget_s if short else config.DEFAULT_STEP_TIME_BUDGET_SECONDS
        os.environ[config.STEP_TIME_BUDGET_SECONDS] = str(budget)


@dataclass
class Rounds:
    """What the chaos phase did."""

    rounds: int = 0
    overlapping_rounds: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    timed_out: list[str] = field(default_factory=list)
    durations_s: list[float] = field(default_factory=list)  # each round's longest execution

    def add(self, results: list[ExecutionResult]) -> None:
        self.rounds += 1
        self.durations_s.append(max((r.duration_s for r in results), default=0.0))
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
    machine: LocalDeployment,
    plan: FaultPlan,
    rng: random.Random,
    seconds: float,
    windows: SmallWindows | None = None,
) -> Rounds:
    """Rounds of one to three overlapping executions until ``seconds`` have passed."""
    done = Rounds()
    deadline = time.monotonic() + seconds
    intensities: list[Intensity] = [CALM, LIGHT, HEAVY]
    while time.monotonic() < deadline:
        if windows is not None:
            windows.apply(rng, first=done.rounds == 0)
        # The first round ingests the whole seeded database, under heavy fire.
        plan.intensity = HEAVY if done.rounds == 0 else rng.choices(intensities, (1, 3, 3))[0]
        count = rng.choices((1, 2, 3), (5, 4, 1))[0]
        events = [{"tables_to_query": _tables(rng)} for _ in range(count)]
        delays = [0.0] + [rng.uniform(0.0, 1.5) for _ in range(count - 1)]
        done.add(machine.run_together(events, delays_s=delays, timeout_s=EXECUTION_TIMEOUT_S))
    return done


def _catch_up(machine: LocalDeployment, tally: TaskTally, conn: Any) -> list[ExecutionResult]:
    """Clean runs until one succeeds with an end bound past every row's last_updated
    (as an instant: a wall-clock time of the repeated hour counts as its later one)."""
    newest = max(
        conn.run(
            "SELECT max(last_updated AT TIME ZONE current_setting('TimeZone') AT TIME ZONE 'UTC')"
            f' FROM "{table}"'
        )[0][0]
        for table in TABLES
    )
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

    fall_back: datetime
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
    # The product's own audit (totes_ingest.audit), run last over all history.
    verdicts: list[TableAudit] = field(default_factory=list)

    def summary(self) -> str:
        rounds, tasks, audit, writers = self.rounds, self.tasks, self.audit, self.writers
        statuses = ", ".join(f"{k.lower()} {n}" for k, n in sorted(rounds.statuses.items()))
        finals = ", ".join(result.status.lower() for result in self.final)
        leftovers = audit.staged_leftovers
        refused = len([key for key in leftovers if key in self.plan.refused_deletes])
        restaged = len([key for key in leftovers if key in self.plan.restaged()])
        unexplained = len(audit.unexplained_leftovers(self.explained_leftovers()))
        return "\n".join(
            [
                f"chaos seed {self.seed}: {self.seconds:g} s of chaos, {self.elapsed_s:.1f} s "
                f"in all; the source's clock fell back an hour at {self.fall_back} UTC",
                f"writers: {', '.join(STYLES)}",
                f"rounds {rounds.rounds} ({rounds.overlapping_rounds} with overlapping "
                f"executions); executions {statuses}; final clean runs {finals} "
                f"({', '.join(f'{r.duration_s:.1f}' for r in self.final)} s)",
                f"rounds took {', '.join(f'{d:.1f}' for d in rounds.durations_s)} s",
                f"writers: transactions committed {writers.committed}, rolled back "
                f"{writers.rolled_back}, aborted {writers.aborted}; row versions committed "
                f"{sum(writers.versions.values())}",
                f"faults injected {sum(self.plan.injected.values())}:",
                *(f"  {n:5d}  {kind}" for kind, n in sorted(self.plan.injected.items())),
                f"task invocations {sum(tasks.invocations.values())}; failures by step and error:",
                *(f"  {n:5d}  {kind}" for kind, n in sorted(tasks.errors.items())),
                "failures not injected themselves (the pipeline's reaction to a fault):",
                *(f"  {n:5d}  {why}" for why, n in sorted(tasks.collateral.items())),
                f"commits reported written {tasks.written} ({tasks.rows_written} row "
                f"versions); tables skipped because of overlaps: claim lost {tasks.skipped}, "
                f"watermark already past the run's end {tasks.overtaken}",
                f"plans {tasks.plans} ({tasks.sub_windows} sub-windows); CommitWindows "
                f"handed over at its time budget {tasks.partial} times",
                "pipeline warnings and criticals:",
                *(f"  {n:5d}  {message}" for message, n in sorted(self.logs.messages.items())),
                f"lake: {audit.files} files, {audit.versions} row versions ({self.seeded_rows} "
                f"seeded, {audit.versions - self.seeded_rows} written since); staged objects "
                f"of uncommitted windows {audit.staged_orphans}",
                f"lost {len(audit.lost)}, duplicated {len(audit.duplicated)}, misplaced "
                f"{len(audit.misplaced)}, chain breaks {len(audit.chain_breaks)}, staged "
                f"leftovers of committed windows {len(leftovers)} (delete refused {refused}, "
                f"uploaded again after the commit {restaged}, unexplained {unexplained})",
                f"the audit (all history): {len(self.verdicts)} tables, "
                f"{sum(v.source_rows for v in self.verdicts)} source rows against "
                f"{sum(v.lake_versions for v in self.verdicts)} lake versions; missing "
                f"{sum(v.missing for v in self.verdicts)}, repaired "
                f"{sum(v.repaired for v in self.verdicts)}, newer in lake "
                f"{sum(v.newer_in_lake for v in self.verdicts)}, deleted "
                f"{sum(v.deleted for v in self.verdicts)}",
            ]
        )

    def explained_leftovers(self) -> set[str]:
        return self.plan.refused_deletes | self.plan.restaged()

    def problems(self) -> dict[str, list[str]]:
        found = {
            "lost": self.audit.lost,
            "duplicated": self.audit.duplicated,
            "misplaced": self.audit.misplaced,
            "chain breaks": self.audit.chain_breaks,
            "unexplained staged leftovers": self.audit.unexplained_leftovers(
                self.explained_leftovers()
            ),
            "found by the audit": [
                f"{v.table}: {v.status}, missing {v.missing}, newer in lake {v.newer_in_lake}, "
                f"deleted {v.deleted}, wrote {[*v.repair_keys, v.tombstone_key or '']}, "
                f"{v.examples} {v.reason or ''}"
                for v in self.verdicts
                if v.status != "whole" or v.missing or v.deleted or v.repair_keys
            ],
        }
        return {name: items for name, items in found.items() if items}


def run_chaos(
    settings: dict[str, Any],
    s3: Any,
    logs: LogTally,
    monkeypatch: pytest.MonkeyPatch,
    seed_value: int,
    seconds: float,
    windows: SmallWindows | None = None,
) -> ChaosReport:
    """Seed, write, run under faults for ``seconds``, catch up cleanly, audit the lake
    (``windows``: with small windows, see :class:`SmallWindows`)."""
    began = time.monotonic()
    rng = random.Random(seed_value)
    plan = FaultPlan(seed_value)
    plan.install(monkeypatch, sub_windows=windows is not None)
    tasks = TaskTally()
    writers = Writers(settings, seed_value, count=WRITERS)
    killer = SessionKiller(settings, plan, spare=writers.pids)
    conn = connect(settings)
    try:
        seeded_rows = sum(seed(conn, scale=1).values())
        # The database's clock falls back an hour halfway through the chaos.
        zone, fall_back = fall_back_zone(seconds / 2)
        conn.run(f"ALTER DATABASE \"{settings['database']}\" SET timezone = '{zone}'")
        with LocalDeployment(on_task=tasks) as machine:
            writers.start()
            killer.start()
            plan.enabled = True
            try:
                rounds = _chaos_rounds(machine, plan, rng, seconds, windows)
            finally:
                plan.enabled = False
                plan.intensity = CALM
                killer.stop()
                written = writers.stop()
                plan.join_ghosts()
            if windows is not None:
                windows.apply(None)
            final = _catch_up(machine, tasks, conn)
        audit = audit_lake(conn, s3, TABLES)
        verdicts = audit_tables(
            conn,
            Lake(s3, BUCKET),
            list(TABLES),
            # This connection predates the ALTER DATABASE: name the zone its sessions use.
            AuditSettings(horizon_days=None, source_timezone=zone),
            audit_id="audit-chaos",
        )
    finally:
        plan.enabled = False
        killer.stop_quietly()
        writers.stop_quietly()
        conn.close()
    return ChaosReport(
        fall_back=fall_back,
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
        verdicts=verdicts,
    )
