"""Bounded windows through the real state machine: a Distributed Map stages the
sub-windows, CommitWindows commits them in order (moto runs the ASL that deploys)."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.e2e.conftest import Captured
from tests.lakecheck import duplicated_versions, lake_keys, mismatches, read_file, table_files
from totes_ingest import config, pipeline
from totes_ingest.local.runner import ExecutionResult, run_state_machine
from totes_ingest.local.totesys import TABLES

pytestmark = pytest.mark.e2e

TIMEOUT_S = 300
# A million more sales orders than the seed's, their values drawn from the id (the
# benchmarks' fill), last_updated rising 61 ms a row with jitter (ties are possible).
MILLION = """
INSERT INTO sales_order
SELECT g, 1 + abs(hashint8(g)) % 500, 1 + abs(hashint8(g + 1)) % 10,
       1 + abs(hashint8(g + 2)) % 20, 1000 + abs(hashint8(g + 3)) % 99001,
       round(2 + (abs(hashint8(g + 4)) % 201) / 100.0, 2), 1 + abs(hashint8(g + 5)) % 3,
       '2024-01-01', '2024-01-09', 1 + abs(hashint8(g + 7)) % 30,
       timestamp '2024-01-01' + g * interval '61 milliseconds',
       timestamp '2024-01-01' + g * interval '61 milliseconds'
         + (abs(hashint8(g + 8)) % 100) * interval '1 millisecond'
FROM generate_series(100001, 1100000) AS g
"""


@pytest.fixture(autouse=True)
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("END_TIME_SAFETY_MARGIN_SECONDS", "0")
    monkeypatch.setenv(config.MAX_WINDOW_ROWS, "1000")


def run(tables: list[str] | tuple[str, ...] = TABLES) -> ExecutionResult:
    return run_state_machine({"tables_to_query": list(tables)}, timeout_s=TIMEOUT_S)


def messages(logs: Captured, message: str, table: str = "sales_order") -> list[dict[str, Any]]:
    return [r for r in logs.records() if r["message"] == message and r.get("table") == table]


def test_tables_above_the_bound_land_as_chains_of_windows_every_row_once(
    source: Any, s3: Any, logs: Captured
) -> None:
    result = run()

    assert result.succeeded, result.describe()
    output = result.output
    assert isinstance(output, dict)
    for table in TABLES:
        files = table_files(s3, table)
        ((count,),) = source.run(f"SELECT count(*) FROM {table}")
        assert output[table] == files[-1]  # the newest key, as with one window
        assert len(files) >= math.ceil(count / 1000)
        assert all(read_file(s3, key).num_rows <= 1000 for key in files)
        assert mismatches(source, s3, table) == []
        assert duplicated_versions(s3, table) == []
    assert len(table_files(s3, "sales_order")) == 10
    staging = lake_keys(s3, "_staging/")  # every staged object committed; the plans stay
    assert [k for k in staging if not k.endswith(".json")] == []
    planned = messages(logs, "Planned windows")
    assert [r["windows"] for r in planned] == [10]


def test_a_kill_between_two_sub_window_commits_resumes_without_re_extracting(
    source: Any, s3: Any, logs: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a run killed after committing 3 of the 10 sub-windows of sales_order
    commits: list[str] = []
    commit_table = pipeline.commit_table

    def killed_at_the_fourth(payload: Any, *args: Any, **kwargs: Any) -> Any:
        if len(commits) == 3:
            raise RuntimeError("killed between two sub-window commits")
        commits.append(payload["end_time"])
        return commit_table(payload, *args, **kwargs)

    monkeypatch.setattr(pipeline, "commit_table", killed_at_the_fourth)
    first = run(["sales_order"])
    assert not first.succeeded
    assert len(table_files(s3, "sales_order")) == 3
    monkeypatch.setattr(pipeline, "commit_table", commit_table)
    staged_before = len(messages(logs, "Staged parquet"))
    assert staged_before == 10

    # WHEN the next run starts
    second = run(["sales_order"])

    # THEN it commits the 7 staged sub-windows without extracting them again
    assert second.succeeded, second.describe()
    reused = messages(logs, "Reusing a staged window")
    assert len(reused) == 7
    extracted = messages(logs, "Staged parquet")[staged_before:]
    assert [r["rows"] for r in extracted] == [0]  # only the empty tail since the first run
    files = table_files(s3, "sales_order")
    assert second.output == {"sales_order": files[-1]}
    assert len(files) == 10  # the empty tail is not committed
    assert mismatches(source, s3, "sales_order") == []
    assert duplicated_versions(s3, "sales_order") == []


def test_a_million_rows_with_small_windows_give_the_expected_chain(
    source: Any, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(config.MAX_WINDOW_ROWS, "200000")
    source.run(MILLION)
    source.run("ANALYZE sales_order")
    ((rows, units, prices),) = source.run(
        "SELECT count(*), sum(units_sold), sum(unit_price) FROM sales_order"
    )

    result = run(["sales_order"])

    assert result.succeeded, result.describe()
    files = table_files(s3, "sales_order")
    assert result.output == {"sales_order": files[-1]}
    assert len(files) == math.ceil(rows / 200_000)  # no tie straddles a 200,000th row
    parts = [read_file(s3, key) for key in files]
    assert all(p.num_rows <= 200_000 for p in parts)
    ids = pc.unique(pa.concat_arrays([c for p in parts for c in p.column("sales_order_id").chunks]))
    assert (sum(p.num_rows for p in parts), len(ids)) == (rows, rows)
    assert sum(pc.sum(p.column("units_sold")).as_py() for p in parts) == units
    assert sum(pc.sum(p.column("unit_price")).as_py() for p in parts) == prices
