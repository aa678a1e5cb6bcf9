"""The chaos test has teeth: broken pipelines, each with one classic incremental-load bug,
fail its audit. (Slow: run by ``make chaos``.)

- the end bound at the database clock, ignoring transactions still open: a row stamped
  before the bound but committed after the run read the window is never ingested;
- the window's start exclusive (``>`` instead of ``>=``): a row stamped exactly at the
  watermark (the start of the transaction that held the previous bound back) is lost;
- a commit without its claim: two overlapping executions both publish windows starting
  at the same watermark, so row versions appear twice.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.chaos.audit import LogTally
from tests.chaos.scenario import run_chaos
from totes_ingest import config, end_bound, pipeline
from totes_ingest.cursor import CursorRange
from totes_ingest.generate_file_key import generate_file_key, staging_key
from totes_ingest.lake import Claim, CommitResult, Lake
from totes_ingest.source import SourceTable
from totes_ingest.window import Window

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SECONDS = float(os.environ.get("TOTES_CHAOS_MUTANT_SECONDS", 60))


def _end_bound_at_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    original = end_bound.commit_safe_end_time

    def at_the_clock(conn: Any, *args: Any, **kwargs: Any) -> end_bound.EndBound:
        bound = original(conn, *args, **kwargs)
        return dataclasses.replace(bound, end_time=bound.clock)

    monkeypatch.setattr(pipeline, "commit_safe_end_time", at_the_clock)


def _exclusive_window_start(monkeypatch: pytest.MonkeyPatch) -> None:
    original = CursorRange.predicate

    def exclusive(self: CursorRange, table: SourceTable, column: str) -> str:
        return original(self, table, column).replace(">=", ">")

    monkeypatch.setattr(CursorRange, "predicate", exclusive)


def _commit_without_claim(monkeypatch: pytest.MonkeyPatch) -> None:
    def commit(self: Lake, window: Window, rows: int) -> CommitResult:
        table, start, end, run_id = window.table, window.start, window.end, window.run_id
        final = generate_file_key(table, end)
        claim = Claim(run_id, start, end, final, staging_key(table, start, end, run_id), rows)
        self._finish(table, claim)
        return CommitResult("written", final)

    monkeypatch.setattr(Lake, "commit", commit)


MUTANTS: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], set[str]]] = {
    "end bound at the clock": (_end_bound_at_the_clock, {"lost"}),
    "exclusive window start": (_exclusive_window_start, {"lost"}),
    "commit without claim": (_commit_without_claim, {"duplicated", "misplaced"}),
}


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_the_chaos_audit_catches_a_broken_pipeline(
    db_secret: dict[str, Any],
    s3: Any,
    pipeline_logs: LogTally,
    monkeypatch: pytest.MonkeyPatch,
    chaos_seed: int,
    mutant: str,
) -> None:
    # GIVEN a pipeline with one classic bug, and no re-read overlap to make up for it
    breaks, expected = MUTANTS[mutant]
    breaks(monkeypatch)
    monkeypatch.setenv(config.REREAD_LAG_SECONDS, "0")
    # WHEN it runs under chaos
    report = run_chaos(db_secret, s3, pipeline_logs, monkeypatch, chaos_seed, SECONDS)
    print(f"\nmutant {mutant!r}, seed {chaos_seed}:\n{report.summary()}")
    # THEN the audit finds the damage the bug does
    found = set(report.problems())
    assert found & expected, f"{mutant!r} went unnoticed (seed {chaos_seed}): found {found}"
