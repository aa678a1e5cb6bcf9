"""Exactly-once under chaos: busy writers, faults everywhere, overlapping executions.

While writer threads insert and update ToteSys rows in transactions of random length,
the real state machine (real ASL, real handlers, moto) runs round after round, one to
three executions at a time over the same tables, with faults injected at random points
(see ``faults.py`` and ``scenario.py``). Then the writers stop, a clean run catches up,
and the lake must hold every row's newest version exactly as the database has it, no
row version twice, every version inside its file's window.

Each test runs twice: with whole windows, and with small ones (``SmallWindows``: every
round cuts the busy tables into sub-windows, staged by the Distributed Map and committed
by CommitWindows, with faults in planning, in the map's children, between two sub-window
commits and in the plan object itself).

Every decision comes from one seed, printed first; ``TOTES_CHAOS_SEED=<seed>`` replays
the same plan. The default test runs 25 s of chaos in all (13 s whole, 12 s small: about
40 s and 50 s with set-up and catch-up); the ``slow`` one runs ``TOTES_CHAOS_SECONDS``
(default 240) of each and is meant for ``make chaos``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.chaos.audit import LogTally
from tests.chaos.scenario import SmallWindows, run_chaos
from totes_ingest import config, pipeline

pytestmark = pytest.mark.e2e

# The default suite's 25 s of chaos, split between the two kinds of windows.
DEFAULT_CHAOS_SECONDS = {"whole windows": 13.0, "small windows": 12.0}
LONG_CHAOS_SECONDS = 240.0
WINDOWS = pytest.mark.parametrize("windows", list(DEFAULT_CHAOS_SECONDS))


def _windows(name: str, monkeypatch: pytest.MonkeyPatch) -> SmallWindows | None:
    if name == "whole windows":
        return None
    policy = SmallWindows()
    # Restored after the test (the rounds set them for each round).
    monkeypatch.setattr(pipeline, "MAX_PLAN_WINDOWS", pipeline.MAX_PLAN_WINDOWS)
    monkeypatch.setenv(config.MAX_WINDOW_ROWS, str(policy.first_round_rows))
    monkeypatch.setenv(
        config.STEP_TIME_BUDGET_SECONDS, str(config.DEFAULT_STEP_TIME_BUDGET_SECONDS)
    )
    return policy


def check_exactly_once(
    settings: dict[str, Any],
    s3: Any,
    logs: LogTally,
    monkeypatch: pytest.MonkeyPatch,
    seed_value: int,
    seconds: float,
    windows: SmallWindows | None = None,
) -> None:
    replay = f"(replay with TOTES_CHAOS_SEED={seed_value})"
    print(f"\nchaos seed {seed_value} {replay}, {'small' if windows else 'whole'} windows")
    # GIVEN a seeded ToteSys, busy writers, faults switched on
    # WHEN executions run, alone and overlapping, then clean runs catch up
    report = run_chaos(settings, s3, logs, monkeypatch, seed_value, seconds, windows)
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


@WINDOWS
def test_no_row_version_is_lost_or_duplicated_under_chaos(
    db_secret: dict[str, Any],
    s3: Any,
    pipeline_logs: LogTally,
    monkeypatch: pytest.MonkeyPatch,
    chaos_seed: int,
    windows: str,
) -> None:
    policy = _windows(windows, monkeypatch)
    seconds = DEFAULT_CHAOS_SECONDS[windows]
    check_exactly_once(db_secret, s3, pipeline_logs, monkeypatch, chaos_seed, seconds, policy)


@pytest.mark.slow
@WINDOWS
def test_no_row_version_is_lost_or_duplicated_under_long_chaos(
    db_secret: dict[str, Any],
    s3: Any,
    pipeline_logs: LogTally,
    monkeypatch: pytest.MonkeyPatch,
    chaos_seed: int,
    windows: str,
) -> None:
    policy = _windows(windows, monkeypatch)
    seconds = float(os.environ.get("TOTES_CHAOS_SECONDS", LONG_CHAOS_SECONDS))
    check_exactly_once(db_secret, s3, pipeline_logs, monkeypatch, chaos_seed, seconds, policy)
