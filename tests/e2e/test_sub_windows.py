"""Bounded windows through the real state machine: a Distributed Map stages the
sub-windows, CommitWindows commits them in order (moto runs the ASL that deploys)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.lakecheck import duplicated_versions, lake_keys, mismatches, table_files
from totes_ingest import config
from totes_ingest.local.runner import ExecutionResult, run_state_machine
from totes_ingest.local.seed import seed
from totes_ingest.local.totesys import TABLES

pytestmark = pytest.mark.e2e

TIMEOUT_S = 300


@pytest.fixture(autouse=True)
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("END_TIME_SAFETY_MARGIN_SECONDS", "0")
    monkeypatch.setenv(config.MAX_WINDOW_ROWS, "1000")


def run(tables: list[str] | tuple[str, ...] = TABLES) -> ExecutionResult:
    return run_state_machine({"tables_to_query": list(tables)}, timeout_s=TIMEOUT_S)


def test_a_table_above_the_bound_lands_as_a_chain_of_windows_every_row_once(
    db_secret: dict[str, Any], s3: Any, connect: Any
) -> None:
    conn = connect(db_secret)
    seed(conn, scale=1)
    result = run()
    assert result.succeeded, result.describe()
    output = result.output
    assert isinstance(output, dict)
    for table in TABLES:
        files = table_files(s3, table)
        assert output[table] == files[-1]
        assert mismatches(conn, s3, table) == []
        assert duplicated_versions(s3, table) == []
    print({t: len(table_files(s3, t)) for t in TABLES})
    print([k for k in lake_keys(s3) if k.startswith("_staging/")])
