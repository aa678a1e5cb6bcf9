"""Bounded windows: cuts computed in the database, ties kept together (window_plan)."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

import pytest

from totes_ingest import window_plan
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
    subs = window_plan.plan_windows(payload, conn, max_window_rows=1000)
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
    subs = window_plan.plan_windows(pipeline.find_watermark(first, lake), conn, max_window_rows=500)
    assert len(subs) == 5
    staged = [pipeline.stage_table(sub, conn, lake, row_group_rows=1024) for sub in subs]
    for done in staged[:2]:
        assert pipeline.commit_table(done, lake)["status"] == "written"
    # killed here: three windows staged, not committed. The next run resumes from them.
    second = {**base, "run_id": "run-b", "end_time": "2026-01-03 00:00:00.000000"}
    conn.run("INSERT INTO t (last_updated) VALUES (TIMESTAMP '2026-01-02 12:00:00')")
    resumed = window_plan.plan_windows(
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


# --- a plan: saved by QueryToParquet, staged item by item, committed in chain order ---


def _planned(conn: Any, s3: Any, n: int, max_rows: int, run_id: str = "run-plan") -> Any:
    from tests.conftest import BUCKET
    from totes_ingest import pipeline
    from totes_ingest.lake import Lake

    _table(conn, [T0 + timedelta(milliseconds=i) for i in range(n)])
    lake = Lake(s3, BUCKET)
    payload = {
        "table": "t",
        "run_id": run_id,
        "end_time": "2026-01-02 00:00:00.000000",
        "source_timezone": "UTC",
        "hold": None,
    }
    found = pipeline.find_watermark(payload, lake)
    plan = pipeline.stage_table(found, conn, lake, row_group_rows=1024, max_window_rows=max_rows)
    return lake, plan


def _stage_all(conn: Any, lake: Any, plan: Any, skip: tuple[int, ...] = ()) -> list[Any]:
    from totes_ingest import pipeline
    from totes_ingest.sub_windows import load_plan

    items = load_plan(lake, plan)
    for i, item in enumerate(items):
        if i not in skip:
            pipeline.stage_table(item, conn, lake, row_group_rows=1024)
    return items


def test_a_window_above_the_bound_is_saved_as_a_plan_and_committed_in_order(
    conn: Any, s3: Any
) -> None:
    from tests.lakecheck import lake_keys, read_file, table_files
    from totes_ingest import pipeline

    lake, plan = _planned(conn, s3, 2500, 500)
    assert plan["windows"] == 5
    assert plan["key_columns"] == ["id"]
    assert plan["plan"]["key"] == "_staging/t/plan-run-plan.json"
    assert not [k for k in lake_keys(s3) if k.endswith(".parquet")]  # nothing extracted yet
    items = _stage_all(conn, lake, plan)
    assert [item["plan_index"] for item in items] == list(range(5))

    result = pipeline.commit_windows(plan, lake)

    files = table_files(s3, "t")
    assert result == {
        "table": "t",
        "status": "written",
        "key": "t/2026/01/02/000000000000.parquet",
        "rows": 2500,
        "reason": None,
    }
    assert len(files) == 5
    assert files[-1] == result["key"]
    ids = [i for key in files for i in read_file(s3, key).column("id").to_pylist()]
    assert sorted(ids) == list(range(1, 2501))
    assert lake_keys(s3, "_staging/") == [plan["plan"]["key"]]  # staged objects committed
    # the newest file's columns, from its footer alone, are what Glue is told of
    from totes_ingest.sub_windows import footer_schema

    assert footer_schema(lake, files[-1], "t") == read_file(s3, files[-1]).schema


def test_a_sub_window_not_staged_stops_the_chain_there_and_the_next_run_resumes(
    conn: Any, s3: Any
) -> None:
    from tests.lakecheck import read_file, table_files
    from totes_ingest import pipeline
    from totes_ingest.errors import LakeError

    lake, plan = _planned(conn, s3, 2500, 500)
    items = _stage_all(conn, lake, plan, skip=(2,))

    not_staged = r"sub-window 3 of 5 was not staged.*table=t; window=\[2026"
    with pytest.raises(LakeError, match=not_staged):
        pipeline.commit_windows(plan, lake)

    assert len(table_files(s3, "t")) == 2
    mark = lake.resolve_watermark("t")
    assert pipeline.Window.from_payload(items[1]).end == mark.end
    # the next run plans from there, reusing the two staged sub-windows after the gap
    again = {**plan, "run_id": "run-next", "end_time": "2026-01-03 00:00:00.000000"}
    again = pipeline.find_watermark(again, lake)
    subs = window_plan.plan_windows(again, conn, lake, max_window_rows=500)
    assert [s.get("staged_by") for s in subs] == [None, "run-plan", "run-plan", None]
    gap = subs[0]["cursor"]  # the gap, planned again (with the run's re-read overlap)
    assert (gap["start"], gap["end"]) == (items[2]["cursor"]["start"], items[2]["cursor"]["end"])
    assert subs[3]["start_time"] == items[4]["end_time"]  # then what is new since: nothing
    # the tail's re-read reaches into the last reused window: told of its staged object
    assert [k.rsplit("-", 1)[-1] for k in subs[3]["reread_staged"]] == ["plan.parquet"]
    for sub in subs[:3]:
        out = pipeline.stage_table(sub, conn, lake, row_group_rows=1024)
        assert (out["bytes"] == 0) == bool(sub.get("staged_by"))  # reused: not extracted
        assert pipeline.commit_table(out, lake)["status"] == "written"
    ids = [i for key in table_files(s3, "t") for i in read_file(s3, key).column("id").to_pylist()]
    assert sorted(ids) == list(range(1, 2501))


def test_at_its_time_budget_commit_windows_hands_the_rest_to_its_next_call(
    conn: Any, s3: Any
) -> None:
    from tests.lakecheck import table_files
    from totes_ingest import pipeline

    lake, plan = _planned(conn, s3, 1500, 500)
    _stage_all(conn, lake, plan)

    partial = pipeline.commit_windows(plan, lake, deadline=0.0)  # long past

    assert partial["status"] == "partial"
    assert partial["committed"] == 1  # one commit a call at least: it always progresses
    assert len(table_files(s3, "t")) == 1
    partial = pipeline.commit_windows(partial, lake, deadline=0.0)
    assert partial["committed"] == 2
    done = pipeline.commit_windows(partial, lake)
    assert (done["status"], done["rows"]) == ("written", 1500)
    assert len(table_files(s3, "t")) == 3


def test_a_sub_window_emptied_after_planning_is_committed_empty_and_the_chain_holds(
    conn: Any, s3: Any
) -> None:
    from tests.lakecheck import read_file, table_files
    from totes_ingest import pipeline
    from totes_ingest.sub_windows import load_plan

    lake, plan = _planned(conn, s3, 1500, 500)
    middle = load_plan(lake, plan)[1]["cursor"]
    conn.run(
        "DELETE FROM t WHERE last_updated >= CAST(:a AS timestamp) "
        "AND last_updated < CAST(:b AS timestamp)",
        a=middle["start"],
        b=middle["end"],
    )
    _stage_all(conn, lake, plan)

    result = pipeline.commit_windows(plan, lake)

    files = table_files(s3, "t")
    assert (result["status"], result["rows"], len(files)) == ("written", 1000, 3)
    assert read_file(s3, files[1]).num_rows == 0
    assert read_file(s3, files[1]).schema.names == ["id", "last_updated"]


def test_a_plan_that_is_not_the_tables_own_is_refused_naming_the_table(conn: Any, s3: Any) -> None:
    import json

    from tests.conftest import BUCKET
    from totes_ingest import pipeline
    from totes_ingest.errors import InvalidEvent, LakeError

    lake, plan = _planned(conn, s3, 1500, 500)
    with pytest.raises(InvalidEvent, match="plan"):
        pipeline.commit_windows({**plan, "plan": {"key": "_staging/x/plan-run-plan.json"}}, lake)
    key = plan["plan"]["key"]
    items = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    for forged in (
        [{**items[0], "table": "other"}, *items[1:]],
        [{**items[0], "run_id": "run-other"}, *items[1:]],
        [items[1], items[0], items[2]],
        [{k: v for k, v in items[0].items() if k != "cursor"}, *items[1:]],
        {"not": "a list"},
    ):
        s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(forged).encode())
        with pytest.raises(LakeError, match=r"plan .*table=t"):
            pipeline.commit_windows(plan, lake)


def test_a_single_window_staged_by_a_run_that_failed_to_commit_is_reused_and_committed(
    conn: Any, s3: Any
) -> None:
    from tests.conftest import BUCKET
    from tests.lakecheck import read_file, table_files
    from totes_ingest import pipeline
    from totes_ingest.lake import Lake

    _table(conn, [T0 + timedelta(seconds=i) for i in range(20)])
    lake = Lake(s3, BUCKET)
    base = {"table": "t", "source_timezone": "UTC", "hold": None}
    first = {**base, "run_id": "run-a", "end_time": "2026-01-02 00:00:00.000000"}
    staged = pipeline.stage_table(
        pipeline.find_watermark(first, lake), conn, lake, row_group_rows=64
    )
    assert staged["rows"] == 20  # and its commit never happened
    second = {**base, "run_id": "run-b", "end_time": "2026-01-02 00:00:00.000000"}

    reused = pipeline.stage_table(
        pipeline.find_watermark(second, lake), conn, lake, row_group_rows=64
    )

    assert (reused["staged_by"], reused["bytes"], reused["windows"]) == ("run-a", 0, 1)
    assert pipeline.commit_table(reused, lake)["status"] == "written"
    (key,) = table_files(s3, "t")
    assert read_file(s3, key).num_rows == 20


def test_two_gaps_are_planned_in_one_run_and_no_version_lands_twice(conn: Any, s3: Any) -> None:
    from tests.lakecheck import read_file, table_files
    from totes_ingest import pipeline
    from totes_ingest.errors import LakeError

    lake, plan = _planned(conn, s3, 2500, 500)  # five sub-windows within 2.5 s
    items = _stage_all(conn, lake, plan, skip=(1, 3))
    with pytest.raises(LakeError, match="sub-window 2 of 5"):
        pipeline.commit_windows(plan, lake)
    again = {**plan, "run_id": "run-next", "end_time": "2026-01-03 00:00:00.000000"}

    subs = window_plan.plan_windows(
        pipeline.find_watermark(again, lake), conn, lake, max_window_rows=500
    )

    assert [s.get("staged_by") for s in subs] == [None, "run-plan", None, "run-plan", None]
    second_gap = subs[2]["cursor"]
    # its re-read reaches no lower than the first gap's end: those rows are the first's
    assert second_gap["reread_from"] == items[1]["cursor"]["end"]
    between = pipeline.Window.from_payload(items[2])  # the reused window between the gaps
    assert subs[2]["reread_staged"] == [
        pipeline.staging_key("t", between.start, between.end, "run-plan")
    ]
    for sub in subs:
        out = pipeline.stage_table(sub, conn, lake, row_group_rows=1024)
        if out["rows"]:
            assert pipeline.commit_table(out, lake)["status"] == "written"
    ids = [i for key in table_files(s3, "t") for i in read_file(s3, key).column("id").to_pylist()]
    assert sorted(ids) == list(range(1, 2501))


def test_a_sub_window_past_its_time_budget_is_staged_shorter_and_the_rest_handed_on(
    conn: Any, s3: Any
) -> None:
    import time

    from tests.lakecheck import read_file, table_files
    from totes_ingest import pipeline

    lake, plan = _planned(conn, s3, 1500, 500)
    items = _stage_all(conn, lake, plan, skip=(1,))
    # GIVEN the second sub-window's child: 2 s left, at 100 rows a second
    soon = time.monotonic() + 2
    out = pipeline.stage_table(
        items[1], conn, lake, row_group_rows=1024, rows_per_second=100, deadline=soon
    )
    assert 0 < out["rows"] <= 200  # what fits in its budget, cut at a cursor value
    assert out["end_time"] < items[1]["end_time"]

    # WHEN CommitWindows commits the plan
    result = pipeline.commit_windows(plan, lake)

    # THEN it commits the shorter window and stops the chain there
    assert (result["status"], result["rows"]) == ("written", 500 + out["rows"])
    assert len(table_files(s3, "t")) == 2
    assert lake.resolve_watermark("t").key == result["key"]
    # AND the next run plans the rest, reusing the third, and no row lands twice
    again = {**plan, "run_id": "run-next", "end_time": "2026-01-03 00:00:00.000000"}
    subs = window_plan.plan_windows(
        pipeline.find_watermark(again, lake), conn, lake, max_window_rows=500
    )
    assert [s.get("staged_by") for s in subs][:2] == [None, "run-plan"]
    for sub in subs:
        staged = pipeline.stage_table(sub, conn, lake, row_group_rows=1024)
        if staged["rows"]:
            assert pipeline.commit_table(staged, lake)["status"] == "written"
    ids = [i for key in table_files(s3, "t") for i in read_file(s3, key).column("id").to_pylist()]
    assert sorted(ids) == list(range(1, 1501))


def test_a_sub_window_within_its_budget_is_staged_whole(conn: Any, s3: Any) -> None:
    import time

    from totes_ingest import pipeline
    from totes_ingest.sub_windows import load_plan

    lake, plan = _planned(conn, s3, 1500, 500)
    item = load_plan(lake, plan)[1]
    out = pipeline.stage_table(
        item, conn, lake, row_group_rows=1024, deadline=time.monotonic() + 60
    )
    assert (out["rows"], out["end_time"]) == (500, item["end_time"])


def test_a_plan_ending_with_nothing_new_after_reused_windows_commits_no_empty_file(
    conn: Any, s3: Any
) -> None:
    from tests.lakecheck import read_file, table_files
    from totes_ingest import pipeline

    # GIVEN a run's three sub-windows staged and never committed, and nothing new after
    lake, plan = _planned(conn, s3, 1500, 500, run_id="run-a")
    _stage_all(conn, lake, plan)
    # WHEN a later run reuses them and stages the rest of its window (nothing new)
    later = {**plan, "run_id": "run-b", "end_time": "2026-01-03 00:00:00.000000"}
    again = pipeline.stage_table(
        pipeline.find_watermark(later, lake), conn, lake, row_group_rows=1024, max_window_rows=500
    )
    items = _stage_all(conn, lake, again)
    assert [i.get("staged_by") for i in items] == ["run-a", "run-a", "run-a", None]
    result = pipeline.commit_windows(again, lake)
    # THEN the reused windows are the chain's, the empty rest is not committed
    files = table_files(s3, "t")
    assert [read_file(s3, f).num_rows for f in files] == [500, 500, 500]
    assert (result["status"], result["rows"], result["key"]) == ("written", 1500, files[-1])
    assert pipeline.commit_windows(again, lake) == result  # a retry answers the same
    # and the next run starts where they end: its staged empty window is not reused
    after = {**plan, "run_id": "run-c", "end_time": "2026-01-04 00:00:00.000000"}
    found = pipeline.find_watermark(after, lake)
    assert found["start_time"] == items[2]["end_time"]
    subs = window_plan.plan_windows(found, conn, lake, max_window_rows=500)
    assert [s.get("staged_by") for s in subs] == [None]


def test_a_partial_commit_whose_rest_holds_nothing_new_names_the_key_written_before(
    conn: Any, s3: Any
) -> None:
    from tests.lakecheck import table_files
    from totes_ingest import pipeline
    from totes_ingest.sub_windows import load_plan

    # GIVEN a plan of three staged sub-windows whose last was emptied after planning
    lake, plan = _planned(conn, s3, 1500, 500)
    last = load_plan(lake, plan)[2]["cursor"]
    conn.run("DELETE FROM t WHERE last_updated >= CAST(:a AS timestamp)", a=last["start"])
    _stage_all(conn, lake, plan)
    # WHEN CommitWindows reaches its time budget after each commit
    partial = pipeline.commit_windows(plan, lake, deadline=0.0)
    partial = pipeline.commit_windows(partial, lake, deadline=0.0)
    assert (partial["status"], partial["committed"]) == ("partial", 2)
    done = pipeline.commit_windows(partial, lake, deadline=0.0)
    # THEN the last call, committing nothing, still names the table's newest key
    files = table_files(s3, "t")
    assert len(files) == 2
    assert (done["status"], done["rows"], done["key"]) == ("written", 1000, files[-1])


def test_a_reused_window_committed_by_its_own_run_meanwhile_is_still_committed_once(
    conn: Any, s3: Any
) -> None:
    from tests.conftest import BUCKET
    from tests.lakecheck import read_file, table_files
    from totes_ingest import pipeline
    from totes_ingest.lake import Lake

    # GIVEN a window staged by one run, and found for reuse by an overlapping run
    _table(conn, [T0 + timedelta(seconds=i) for i in range(20)])
    lake = Lake(s3, BUCKET)
    base = {"table": "t", "source_timezone": "UTC", "hold": None}
    first = {**base, "run_id": "run-a", "end_time": "2026-01-02 00:00:00.000000"}
    staged = pipeline.stage_table(
        pipeline.find_watermark(first, lake), conn, lake, row_group_rows=64
    )
    second = {**first, "run_id": "run-b"}
    (reuse,) = window_plan.plan_windows(
        pipeline.find_watermark(second, lake), conn, lake, max_window_rows=1000
    )
    assert reuse["staged_by"] == "run-a"
    # WHEN the first run commits it (its staged object gone) before the second stages it
    assert pipeline.commit_table(staged, lake)["status"] == "written"
    reused = pipeline.stage_table(reuse, conn, lake, row_group_rows=64)
    # THEN the second run's commit finds the claim its own: one file, every row once
    assert reused["rows"] == 20
    assert pipeline.commit_table(reused, lake)["status"] == "written"
    (key,) = table_files(s3, "t")
    assert read_file(s3, key).num_rows == 20
