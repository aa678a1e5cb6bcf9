"""Sub-windows against an adversary: overlapping runs, reused staged windows, rows that
move between planning and staging, forged plans, stale CommitWindows payloads, ties
above the bound, a fall-back of the source's wall clock (real PostgreSQL, moto S3).

Each test drives the steps as the state machine does (GetLastIngestTime's
``find_watermark``, QueryToParquet's ``stage_table`` planning then staging each item of
the plan, CommitWindows' ``commit_windows``) and checks the lake row by row: every row's
current version in it, no (key, cursor) version twice, the chain unbroken.
"""

from __future__ import annotations

import io
import itertools
import json
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.conftest import BUCKET
from tests.lakecheck import lake_keys, table_files
from totes_ingest import pipeline
from totes_ingest.errors import LakeError
from totes_ingest.format_time import format_time, parse_time
from totes_ingest.generate_file_key import claim_key
from totes_ingest.lake import Lake
from totes_ingest.sub_windows import PLAN_INDEX, load_plan

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1)
END = datetime(2026, 1, 2)
TABLE = "t"


# -- the steps, as the state machine runs them ------------------------------------------


def make_table(conn: Any, values: list[datetime], kind: str = "timestamp") -> None:
    conn.run(
        f"CREATE TABLE {TABLE} (id serial PRIMARY KEY, note text, last_updated {kind} NOT NULL)"
    )
    conn.run(f"CREATE INDEX ON {TABLE} (last_updated)")
    insert(conn, values)


def insert(conn: Any, values: list[datetime]) -> None:
    conn.run(
        f"INSERT INTO {TABLE} (last_updated) SELECT unnest(CAST(:v AS timestamp[]))",
        v=[v.isoformat(sep=" ") for v in values],
    )


def watermark(lake: Lake, run: str, end: datetime, zone: str = "UTC") -> dict[str, Any]:
    payload = {
        "table": TABLE,
        "run_id": f"run-{run * 32}"[:36],
        "end_time": format_time(end),
        "source_timezone": zone,
        "hold": None,
    }
    return pipeline.find_watermark(payload, lake)


def query(conn: Any, lake: Lake, payload: dict[str, Any], bound: int) -> dict[str, Any]:
    """QueryToParquet on GetLastIngestTime's output, or on an item of a plan."""
    return pipeline.stage_table(payload, conn, lake, row_group_rows=1024, max_window_rows=bound)


def stage_all(
    conn: Any, lake: Lake, planned: dict[str, Any], bound: int, skip: tuple[int, ...] = ()
) -> list[dict[str, Any]]:
    """The StageWindows map: each item of the plan staged (but those in ``skip``)."""
    items = load_plan(lake, planned)
    for item in items:
        if item[PLAN_INDEX] not in skip:
            query(conn, lake, item, bound)
    return items


def run_through(conn: Any, lake: Lake, payload: dict[str, Any], bound: int) -> dict[str, Any]:
    """QueryToParquet, StageWindows and CommitWindows (or CommitTable) of one table."""
    out = query(conn, lake, payload, bound)
    if out["windows"] > 1:
        stage_all(conn, lake, out, bound)
        return pipeline.commit_windows(out, lake)
    if out["staging_key"] is None:
        return {"status": "empty"}
    return pipeline.commit_table(out, lake)


def lake_rows(s3: Any) -> list[tuple[int, datetime]]:
    """(id, last_updated) of every row version in the table's committed files."""
    rows: list[tuple[int, datetime]] = []
    for key in table_files(s3, TABLE):
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        got = pq.read_table(io.BytesIO(body)).to_pydict()
        rows += list(zip(got["id"], got["last_updated"], strict=True))
    return rows


def assert_exactly_once(conn: Any, s3: Any) -> None:
    """Every row's current version is in the lake, and no version is there twice."""
    found = lake_rows(s3)
    twice = [version for version, n in Counter(found).items() if n > 1]
    assert twice == [], f"{len(twice)} versions twice, e.g. {twice[:5]}"
    current = {(i, at) for i, at in conn.run(f"SELECT id, last_updated FROM {TABLE}")}
    missing = sorted(current - set(found))
    assert missing == [], f"{len(missing)} current versions missing, e.g. {missing[:5]}"


def assert_chain(s3: Any, lake: Lake) -> None:
    """Each committed file is named by the claim for the previous one's end."""
    start = None
    for key in table_files(s3, TABLE):
        claim = lake.read_claim(claim_key(TABLE, start), table=TABLE)
        assert claim is not None, f"no claim for the start of {key}"
        assert claim.final_key == key
        start = claim.end
    assert lake.resolve_watermark(TABLE).end == start


def millis(n: int, at: datetime = T0) -> list[datetime]:
    return [at + timedelta(milliseconds=i) for i in range(n)]


# -- reuse: staged windows of an earlier run ----------------------------------------------


def test_a_window_staged_by_a_run_sharing_the_end_bound_is_reused_and_committed(
    conn: Any, s3: Any
) -> None:
    # GIVEN a run that staged its whole window (below the bound) and died before CommitTable
    make_table(conn, millis(300))
    lake = Lake(s3, BUCKET)
    first = query(conn, lake, watermark(lake, "a", END), 1000)
    assert first["windows"] == 1
    assert first["staging_key"] is not None
    # WHEN an overlapping run with the same end bound (a long transaction held both
    # back) stages the table: it finds that window and reuses it
    second = query(conn, lake, watermark(lake, "b", END), 1000)
    assert second["staging_key"] == first["staging_key"]
    # THEN its CommitTable commits it, every row once
    assert pipeline.commit_table(second, lake)["status"] == "written"
    assert_exactly_once(conn, s3)
    assert_chain(s3, lake)


def test_a_late_row_below_a_reused_window_end_is_re_read_by_the_next_part(
    conn: Any, s3: Any
) -> None:
    # GIVEN a run whose three sub-windows were staged but only the first committed
    make_table(conn, millis(900, END - timedelta(seconds=60)))
    lake = Lake(s3, BUCKET)
    end_a = END
    planned = query(conn, lake, watermark(lake, "a", end_a), 300)
    items = stage_all(conn, lake, planned, 300)
    assert len(items) == 3
    assert pipeline.commit_table({**items[0], "rows": 300}, lake)["status"] == "written"
    # ... and a row a writer the end bound could not see stamped just below that run's
    # end, visible only now (the re-read overlap exists for it)
    late = END - timedelta(seconds=5)
    insert(conn, [late])
    # WHEN the next run reuses the two staged sub-windows and plans the rest
    later = query(conn, lake, watermark(lake, "b", END + timedelta(hours=1)), 300)
    reused = [i.get("staged_by") for i in load_plan(lake, later)]
    assert reused[:2] == [items[0]["run_id"]] * 2
    stage_all(conn, lake, later, 300)
    assert pipeline.commit_windows(later, lake)["status"] == "written"
    # THEN the late row is in the lake, once, as it would be had the run committed all
    assert_exactly_once(conn, s3)
    assert_chain(s3, lake)


def test_a_plan_staged_by_two_overlapping_runs_reusing_the_same_windows_commits_once(
    conn: Any, s3: Any
) -> None:
    # GIVEN an earlier run's staged sub-windows, none committed
    make_table(conn, millis(1000))
    lake = Lake(s3, BUCKET)
    stage_all(conn, lake, query(conn, lake, watermark(lake, "a", END), 300), 300)
    insert(conn, millis(10, END + timedelta(minutes=1)))
    # WHEN two overlapping runs plan the table, both reusing them, and stage their plans
    later = END + timedelta(hours=1)
    b = query(conn, lake, watermark(lake, "b", later), 300)
    c = query(conn, lake, watermark(lake, "c", later + timedelta(seconds=1)), 300)
    for plan in (b, c):
        assert [i.get("staged_by") is not None for i in load_plan(lake, plan)][:4] == [True] * 4
        stage_all(conn, lake, plan, 300)
    # THEN the first to commit writes every window; the other is told it was overtaken
    assert pipeline.commit_windows(b, lake)["status"] == "written"
    assert pipeline.commit_windows(c, lake)["status"] == "skipped"
    assert_exactly_once(conn, s3)
    assert_chain(s3, lake)


def test_a_run_whose_end_is_before_a_reused_windows_end_reuses_only_what_fits(
    conn: Any, s3: Any
) -> None:
    # GIVEN a run A's plan of four sub-windows ending at its end, staged, none committed
    make_table(conn, millis(1200, END - timedelta(hours=1)))
    lake = Lake(s3, BUCKET)
    a = query(conn, lake, watermark(lake, "a", END), 300)
    items = stage_all(conn, lake, a, 300)
    ends = [parse_time(i["end_time"]) for i in items]
    # WHEN a run B whose end bound is earlier (held back) falls inside A's third window
    end_b = ends[1] + (ends[2] - ends[1]) / 2
    b = run_through(conn, lake, watermark(lake, "b", end_b), 300)
    assert b["status"] == "written"
    assert lake.resolve_watermark(TABLE).end == end_b
    # THEN B reused A's first two (they end by its end), and a later run C completes
    # the chain without A's windows that no longer continue it
    c = run_through(conn, lake, watermark(lake, "c", END + timedelta(hours=1)), 300)
    assert c["status"] == "written"
    assert_exactly_once(conn, s3)
    assert_chain(s3, lake)


def test_reused_windows_count_towards_the_plans_bound_on_windows(
    conn: Any, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an earlier run's five staged sub-windows, none committed
    make_table(conn, millis(1500))
    lake = Lake(s3, BUCKET)
    stage_all(conn, lake, query(conn, lake, watermark(lake, "a", END), 300), 300)
    later = END + timedelta(hours=1)
    # WHEN the next runs may plan three windows at most
    monkeypatch.setattr(pipeline, "MAX_PLAN_WINDOWS", 3)
    for run in "bcd":
        planned = query(conn, lake, watermark(lake, run, later), 300)
        # THEN each reuses what fits, the next run going on from there
        assert planned["windows"] <= 3
        run_through(conn, lake, watermark(lake, run, later), 300)
    assert lake.resolve_watermark(TABLE).end == END  # the rest, empty, is not committed
    assert_exactly_once(conn, s3)
    assert_chain(s3, lake)


# -- failures and retries of CommitWindows --------------------------------------------


def test_commit_windows_retried_after_dying_between_two_commits_goes_on(conn: Any, s3: Any) -> None:
    # GIVEN a staged plan whose CommitWindows committed two sub-windows, then died
    make_table(conn, millis(1200))
    lake = Lake(s3, BUCKET)
    planned = query(conn, lake, watermark(lake, "a", END), 300)
    items = stage_all(conn, lake, planned, 300)
    for item in items[:2]:
        assert pipeline.commit_table({**item, "rows": 300}, lake)["status"] == "written"
    # WHEN the state machine retries it with the same input
    result = pipeline.commit_windows(planned, lake)
    # THEN it goes on from where the first attempt got to: every window, every row once
    assert result["status"] == "written"
    assert result["key"] == "t/2026/01/02/000000000000.parquet"
    assert_exactly_once(conn, s3)
    assert_chain(s3, lake)


def test_commit_windows_retried_after_it_succeeded_answers_the_same(conn: Any, s3: Any) -> None:
    # GIVEN a plan committed whole, whose answer was lost (the state machine retries)
    make_table(conn, millis(1200))
    lake = Lake(s3, BUCKET)
    planned = query(conn, lake, watermark(lake, "a", END), 300)
    stage_all(conn, lake, planned, 300)
    done = pipeline.commit_windows(planned, lake)
    assert done["status"] == "written"
    # WHEN it runs again with the same input THEN it answers the same, writing nothing
    assert pipeline.commit_windows(planned, lake) == done
    assert_exactly_once(conn, s3)
    assert_chain(s3, lake)


def test_a_stale_commit_windows_after_another_run_committed_is_skipped(conn: Any, s3: Any) -> None:
    # GIVEN two overlapping runs' plans of the same window, both staged
    make_table(conn, millis(1200))
    lake = Lake(s3, BUCKET)
    a = query(conn, lake, watermark(lake, "a", END), 300)
    b = query(conn, lake, watermark(lake, "b", END), 300)
    stage_all(conn, lake, a, 300)
    stage_all(conn, lake, b, 300)
    # WHEN B commits its plan, then A's CommitWindows runs on its (now stale) input,
    # fresh or handed over after its second sub-window
    assert pipeline.commit_windows(b, lake)["status"] == "written"
    for committed in (0, 2):
        stale = pipeline.commit_windows({**a, "committed": committed}, lake)
        # THEN A is skipped: nothing of it is committed after B's chain
        assert stale["status"] == "skipped"
    assert_exactly_once(conn, s3)
    assert_chain(s3, lake)


def test_a_failed_middle_sub_window_stops_the_chain_and_the_next_run_resumes_there(
    conn: Any, s3: Any
) -> None:
    # GIVEN a plan of five whose third sub-window's StageWindow failed
    make_table(conn, millis(1500))
    lake = Lake(s3, BUCKET)
    planned = query(conn, lake, watermark(lake, "a", END), 300)
    stage_all(conn, lake, planned, 300, skip=(2,))
    # WHEN CommitWindows runs: it commits two, then stops, naming the missing one
    with pytest.raises(LakeError, match="sub-window 3 of 5") as failed:
        pipeline.commit_windows(planned, lake)
    assert failed.value.table == TABLE
    assert len(table_files(s3, TABLE)) == 2
    # THEN the next run resumes at the third, and nothing lands twice
    insert(conn, millis(10, END + timedelta(minutes=1)))
    assert run_through(conn, lake, watermark(lake, "b", END + timedelta(hours=1)), 300)[
        "status"
    ] == ("written")
    assert_exactly_once(conn, s3)
    assert_chain(s3, lake)


def test_the_run_after_a_failed_middle_sub_window_reuses_the_ones_after_it(
    conn: Any, s3: Any
) -> None:
    make_table(conn, millis(1500))
    lake = Lake(s3, BUCKET)
    planned = query(conn, lake, watermark(lake, "a", END), 300)
    stage_all(conn, lake, planned, 300, skip=(2,))
    with pytest.raises(LakeError):
        pipeline.commit_windows(planned, lake)
    later = query(conn, lake, watermark(lake, "b", END + timedelta(hours=1)), 300)
    assert [i.get("staged_by") is not None for i in load_plan(lake, later)][1:3] == [True] * 2


# -- rows that move between planning and staging --------------------------------------


def test_an_empty_middle_sub_window_is_committed_and_the_chain_holds(conn: Any, s3: Any) -> None:
    # GIVEN a plan of four, and every row of its second sub-window updated (moved to
    # later than the run's end) before the map stages it
    make_table(conn, millis(1200))
    lake = Lake(s3, BUCKET)
    planned = query(conn, lake, watermark(lake, "a", END), 300)
    items = load_plan(lake, planned)
    cursor = items[1]["cursor"]
    conn.run(
        f"UPDATE {TABLE} SET last_updated = :later "
        "WHERE last_updated >= :lo AND last_updated < :hi",
        later=END + timedelta(minutes=1),
        lo=parse_time(cursor["start"]),
        hi=parse_time(cursor["end"]),
    )
    # WHEN the map stages the plan and CommitWindows commits it
    stage_all(conn, lake, planned, 300)
    result = pipeline.commit_windows(planned, lake)
    # THEN the empty sub-window is a link of the chain, and the next run has the rows
    assert result["status"] == "written"
    assert len(table_files(s3, TABLE)) == 4
    assert run_through(conn, lake, watermark(lake, "b", END + timedelta(hours=1)), 300)[
        "status"
    ] == ("written")
    assert_exactly_once(conn, s3)
    assert_chain(s3, lake)


def test_rows_moved_into_an_earlier_sub_window_after_planning_are_not_lost(
    conn: Any, s3: Any
) -> None:
    # GIVEN a plan of four sub-windows, all within the re-read lag of its end; rows of
    # the last one set back, by a writer, to values inside the second and third: the
    # second before the map stages it, the third after
    make_table(conn, millis(1200, END - timedelta(seconds=30)))
    lake = Lake(s3, BUCKET)
    planned = query(conn, lake, watermark(lake, "a", END), 300)
    items = load_plan(lake, planned)
    assert len(items) == 4
    back = [parse_time(items[i]["cursor"]["start"]) + timedelta(microseconds=7) for i in (1, 2)]
    query(conn, lake, items[2], 300)  # the third is staged first
    for value, ids in zip(back, ((1101, 1102), (1103, 1104)), strict=True):
        conn.run(
            f"UPDATE {TABLE} SET last_updated = :v, note = 'moved' WHERE id = ANY(:ids)",
            v=value,
            ids=list(ids),
        )
    for i in (0, 1, 3):
        query(conn, lake, items[i], 300)
    assert pipeline.commit_windows(planned, lake)["status"] == "written"
    # WHEN the next run re-reads the overlap below its start
    run_through(conn, lake, watermark(lake, "b", END + timedelta(hours=1)), 300)
    # THEN every row's current version is in the lake, once
    assert_exactly_once(conn, s3)
    assert_chain(s3, lake)


# -- forged plans ----------------------------------------------------------------------


def _forge(s3: Any, planned: dict[str, Any], change: Any) -> None:
    key = planned["plan"]["key"]
    items = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(change(items)).encode())


def _renumbered(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**item, PLAN_INDEX: i} for i, item in enumerate(items)]


FORGERIES = {
    "another table": lambda items: [{**i, "table": "u"} for i in items],
    "another run": lambda items: [{**i, "run_id": "run-" + "e" * 32} for i in items],
    "no plan_index": lambda items: [{k: v for k, v in i.items() if k != PLAN_INDEX} for i in items],
    "plan_index true": lambda items: [items[0], {**items[1], PLAN_INDEX: True}, *items[2:]],
    "no end_time": lambda items: [{k: v for k, v in i.items() if k != "end_time"} for i in items],
    "a gap": lambda items: _renumbered([*items[:1], *items[2:]]),
    "not from the watermark": lambda items: _renumbered(items[1:]),
    "cursor not chained": lambda items: [
        items[0],
        {**items[1], "cursor": {**items[1]["cursor"], "start": items[0]["cursor"]["start"]}},
        *items[2:],
    ],
    "past the run's end": lambda items: [
        *items[:-1],
        {**items[-1], "end_time": format_time(END + timedelta(days=1))},
    ],
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_forged_plan_is_refused_naming_the_table(conn: Any, s3: Any, forgery: str) -> None:
    # GIVEN a staged plan whose object was then forged
    make_table(conn, millis(1200))
    lake = Lake(s3, BUCKET)
    planned = query(conn, lake, watermark(lake, "a", END), 300)
    stage_all(conn, lake, planned, 300)
    _forge(s3, planned, FORGERIES[forgery])
    # WHEN CommitWindows reads it THEN it is refused, naming the table, nothing committed
    with pytest.raises(LakeError) as refused:
        pipeline.commit_windows(planned, lake)
    assert refused.value.table == TABLE
    assert table_files(s3, TABLE) == []
    assert [k for k in lake_keys(s3, "_claims/")] == []


def test_a_vanished_plan_fails_the_table_and_the_next_run_reuses_its_staged_windows(
    conn: Any, s3: Any
) -> None:
    make_table(conn, millis(1200))
    lake = Lake(s3, BUCKET)
    planned = query(conn, lake, watermark(lake, "a", END), 300)
    stage_all(conn, lake, planned, 300)
    s3.delete_object(Bucket=BUCKET, Key=planned["plan"]["key"])
    with pytest.raises(LakeError) as refused:
        pipeline.commit_windows(planned, lake)
    assert refused.value.table == TABLE
    later = query(conn, lake, watermark(lake, "b", END + timedelta(hours=1)), 300)
    assert all(i.get("staged_by") for i in load_plan(lake, later)[:4])
    stage_all(conn, lake, later, 300)
    assert pipeline.commit_windows(later, lake)["status"] == "written"
    assert_exactly_once(conn, s3)
    assert_chain(s3, lake)


# -- ties and wall clocks ----------------------------------------------------------------


def test_one_value_held_by_more_rows_than_the_bound_is_one_window_above_it(
    conn: Any, s3: Any
) -> None:
    tie = T0 + timedelta(seconds=1)
    make_table(conn, millis(250) + [tie] * 700 + millis(250, T0 + timedelta(seconds=2)))
    lake = Lake(s3, BUCKET)
    planned = query(conn, lake, watermark(lake, "a", END), 300)
    sizes = []
    for item in stage_all(conn, lake, planned, 300):
        got = pipeline.commit_table({**item, "rows": lake.verify_staged(_window(item)).rows}, lake)
        assert got["status"] == "written"
        sizes.append(lake.read_claim(claim_key(TABLE, _window(item).start), table=TABLE).rows)
    assert 700 in sizes
    assert all(s <= 300 for s in sizes if s != 700)
    assert_exactly_once(conn, s3)
    assert_chain(s3, lake)


def _window(item: dict[str, Any]) -> Any:
    from totes_ingest.window import Window

    return Window.from_payload(item)


def test_timestamp_cursors_across_a_fall_back_cut_at_strictly_increasing_instants(
    conn: Any, s3: Any
) -> None:
    # GIVEN wall-clock values of Europe/London over the night it fell back (02:00 BST
    # became 01:00 GMT on 26 October 2025): the hour 01:00-02:00 shown twice
    night = datetime(2025, 10, 26, 0, 0)
    values = [night + timedelta(seconds=5 * i) for i in range(12 * 60 * 3)]  # 00:00-03:00
    values += [night + timedelta(hours=1, seconds=5 * i + 2) for i in range(12 * 60)]
    make_table(conn, values)
    lake = Lake(s3, BUCKET)
    end = datetime(2025, 10, 26, 4, 0)  # UTC: 04:00 GMT
    planned = query(conn, lake, watermark(lake, "a", end, zone="Europe/London"), 250)
    items = stage_all(conn, lake, planned, 250)
    ends = [parse_time(i["end_time"]) for i in items]
    # THEN the sub-windows' instants strictly increase up to the run's end
    assert ends == sorted(set(ends))
    assert ends[-1] == end
    starts = [None if i["start_time"] is None else parse_time(i["start_time"]) for i in items]
    assert starts[1:] == ends[:-1]
    # ... and their cursor ranges tile the wall-clock axis
    cursors = [i["cursor"] for i in items]
    assert all(a["end"] == b["start"] for a, b in itertools.pairwise(cursors))
    assert pipeline.commit_windows(planned, lake)["status"] == "written"
    assert_exactly_once(conn, s3)
    assert_chain(s3, lake)
