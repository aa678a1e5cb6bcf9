"""Bounded windows: cuts computed in the database, ties kept together (window_plan)."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

import pytest

from totes_ingest.cursor import CursorRange
from totes_ingest.source import resolve_table
from totes_ingest.window_plan import cut_instants, cut_points

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1)


def _table(conn: Any, values: list[datetime], kind: str = "timestamp") -> Any:
    conn.run(f"CREATE TABLE t (id serial PRIMARY KEY, last_updated {kind} NOT NULL)")
    conn.run("CREATE INDEX ON t (last_updated)")
    conn.run(
        "INSERT INTO t (last_updated) SELECT unnest(CAST(:v AS timestamp[]))",
        v=[v.isoformat(sep=" ") for v in values],
    )
    return resolve_table(conn, "t", "public")


def _sizes(values: list[datetime], cuts: list[datetime], end: datetime) -> list[int]:
    bounds = [None, *cuts, end]
    return [
        sum(1 for v in values if (lo is None or v >= lo) and v < hi)
        for lo, hi in itertools.pairwise(bounds)
    ]


def test_every_window_holds_at_most_the_bound_and_ties_stay_together(conn: Any) -> None:
    # 100 distinct values, each held by 1 to 4 rows
    values = [T0 + timedelta(seconds=i) for i in range(100) for _ in range(1 + i % 4)]
    source = _table(conn, values)
    end = T0 + timedelta(hours=1)
    cut = cut_points(conn, source, CursorRange(None, end), 10, table="t")
    sizes = _sizes(values, cut.values, end)
    assert sum(sizes) == len(values)
    assert all(0 < s <= 10 for s in sizes)
    assert cut.oversized == []
    assert not cut.truncated
    assert len(set(cut.values)) == len(cut.values)
    assert cut.values == sorted(cut.values)
    # a cut is a value: no value has rows on both sides of it (its rows all at or above)
    assert all(c in values for c in cut.values)


def test_a_value_held_by_more_rows_than_the_bound_is_a_window_of_its_own(conn: Any) -> None:
    values = [T0] * 3 + [T0 + timedelta(seconds=1)] * 25 + [T0 + timedelta(seconds=2)] * 3
    source = _table(conn, values)
    end = T0 + timedelta(hours=1)
    cut = cut_points(conn, source, CursorRange(None, end), 10, table="t")
    assert cut.values == [T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)]
    assert _sizes(values, cut.values, end) == [3, 25, 3]
    assert cut.oversized == [1]


def test_a_range_that_fits_is_not_cut_and_the_walk_stops_at_its_window_limit(
    conn: Any,
) -> None:
    values = [T0 + timedelta(seconds=i) for i in range(50)]
    source = _table(conn, values)
    end = T0 + timedelta(hours=1)
    assert cut_points(conn, source, CursorRange(None, end), 50, table="t").values == []
    limited = cut_points(conn, source, CursorRange(None, end), 10, table="t", max_windows=2)
    assert limited.truncated
    assert len(limited.values) == 2


def test_cut_instants_are_strictly_inside_the_window_and_increasing(conn: Any) -> None:
    values = [T0 + timedelta(seconds=i) for i in range(30)]
    source = _table(conn, values)
    cuts = [T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)]
    instants = cut_instants(
        conn, source, "Europe/London", cuts, T0, T0 + timedelta(hours=1), table="t"
    )
    assert instants == cuts  # London is UTC in January
    paris = cut_instants(
        conn, source, "Europe/Paris", cuts, None, T0 + timedelta(hours=1), table="t"
    )
    assert paris == [c - timedelta(hours=1) for c in cuts]


def test_a_planned_chain_stages_and_commits_every_row_once_under_one_key_per_window(
    conn: Any, s3: Any
) -> None:
    import io

    import pyarrow.parquet as pq

    from tests.conftest import BUCKET
    from totes_ingest import pipeline
    from totes_ingest.lake import Lake

    values = [T0 + timedelta(milliseconds=i) for i in range(3000) for _ in range(1 + i % 3)]
    _table(conn, values)
    lake = Lake(s3, BUCKET)
    payload = {
        "table": "t",
        "run_id": "run-plan",
        "end_time": "2026-01-02 00:00:00.000000",
        "source_timezone": "UTC",
        "hold": None,
    }
    payload = pipeline.find_watermark(payload, lake)
    subs = pipeline.plan_windows(payload, conn, max_window_rows=1000)
    assert len(subs) >= len(values) // 1000
    keys = []
    for sub in subs:  # staged in any order, committed in chain order
        staged = pipeline.stage_table(sub, conn, lake, row_group_rows=1024)
        assert 0 < staged["rows"] <= 1000
        keys.append(pipeline.commit_table(staged, lake)["key"])
    assert keys == sorted(keys)
    assert keys[-1] == "t/2026/01/02/000000000000.parquet"
    ids = []
    for key in keys:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        ids += pq.read_table(io.BytesIO(body)).column("id").to_pylist()
    assert sorted(ids) == list(range(1, len(values) + 1))
    assert lake.resolve_watermark("t").key == keys[-1]


def test_a_kill_between_two_sub_window_commits_resumes_without_re_extracting(
    conn: Any, s3: Any
) -> None:
    import io

    import pyarrow.parquet as pq

    from tests.conftest import BUCKET
    from totes_ingest import pipeline
    from totes_ingest.lake import Lake

    values = [T0 + timedelta(milliseconds=i) for i in range(2500)]
    _table(conn, values)
    lake = Lake(s3, BUCKET)
    base = {"table": "t", "source_timezone": "UTC", "hold": None}
    first = {**base, "run_id": "run-a", "end_time": "2026-01-02 00:00:00.000000"}
    subs = pipeline.plan_windows(pipeline.find_watermark(first, lake), conn, max_window_rows=500)
    assert len(subs) == 5
    staged = [pipeline.stage_table(sub, conn, lake, row_group_rows=1024) for sub in subs]
    for done in staged[:2]:
        assert pipeline.commit_table(done, lake)["status"] == "written"
    # killed here: three windows staged, not committed. The next run resumes from them.
    second = {**base, "run_id": "run-b", "end_time": "2026-01-03 00:00:00.000000"}
    conn.run("INSERT INTO t (last_updated) VALUES (TIMESTAMP '2026-01-02 12:00:00')")
    resumed = pipeline.plan_windows(
        pipeline.find_watermark(second, lake), conn, lake, max_window_rows=500
    )
    assert [r.get("staged_by") for r in resumed] == ["run-a"] * 3 + [None]
    assert [r["end_time"] for r in resumed[:3]] == [s["end_time"] for s in subs[2:]]
    keys = []
    for sub in resumed:
        out = pipeline.stage_table(sub, conn, lake, row_group_rows=1024)
        if sub.get("staged_by"):
            assert out["bytes"] == 0  # nothing extracted: the staged object is reused
            assert out["staging_key"].endswith("-run-a.parquet")
        keys.append(pipeline.commit_table(out, lake)["key"])
    assert keys[-1] == "t/2026/01/03/000000000000.parquet"
    ids = []
    for key in sorted(
        k
        for p in [s3.list_objects_v2(Bucket=BUCKET, Prefix="t/")]
        for k in [c["Key"] for c in p["Contents"]]
    ):
        ids += (
            pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
            .column("id")
            .to_pylist()
        )
    assert sorted(ids) == list(range(1, len(values) + 2))
