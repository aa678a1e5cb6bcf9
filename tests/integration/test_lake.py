"""The commit protocol: one successor per watermark, retries and races included, and a
lake that cannot lie to the watermark (stray keys, malformed or forged claims)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import BUCKET
from totes_ingest.cursor import CursorRange
from totes_ingest.errors import LakeError
from totes_ingest.generate_file_key import claim_key, generate_file_key, staging_key
from totes_ingest.lake import Claim, Lake, Watermark, newest_keys, staged_metadata
from totes_ingest.window import Window

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 25, 9, 0, 0, 1)
T1 = datetime(2026, 11, 25, 9, 5, 0, 2)
T2 = datetime(2026, 11, 25, 9, 10, 0, 3)
K0 = "staff/2026/11/25/090000000001.parquet"
K1 = "staff/2026/11/25/090500000002.parquet"


def _window(table: str, start: datetime | None, end: datetime, run: str) -> Window:
    window = Window(table=table, run_id=run, start=start, end=end)
    return window.with_cursor(CursorRange(start, end))


def _stage(s3: Any, window: Window, body: bytes, rows: int = 1) -> None:
    s3.put_object(
        Bucket=BUCKET,
        Key=staging_key(window.table, window.start, window.end, window.run_id),
        Body=body,
        Metadata=staged_metadata(window, rows),
    )


def _committed(lake: Lake, s3: Any, window: Window, body: bytes = b"rows") -> str:
    _stage(s3, window, body)
    result = lake.commit(window, 1)
    assert result.status == "written"
    assert result.key
    return result.key


def _keys(s3: Any) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_commit_publishes_the_staged_object_under_the_window_end(s3: Any) -> None:
    window = _window("staff", None, T0, "run-a")
    _stage(s3, window, b"rows", rows=3)
    result = Lake(s3, BUCKET).commit(window, 3)
    assert result.status == "written"
    assert result.key == K0
    assert s3.get_object(Bucket=BUCKET, Key=result.key)["Body"].read() == b"rows"
    assert not [k for k in _keys(s3) if k.startswith("_staging/")]


def test_a_retried_commit_writes_the_same_key_once(s3: Any) -> None:
    lake = Lake(s3, BUCKET)
    window = _window("staff", None, T0, "run-a")
    _stage(s3, window, b"rows")
    first = lake.commit(window, 1)
    second = lake.commit(window, 1)
    assert first == second
    assert [k for k in _keys(s3) if k.startswith("staff/")] == [first.key]


def test_a_second_run_racing_for_the_same_watermark_is_skipped(s3: Any) -> None:
    lake = Lake(s3, BUCKET)
    a, b = _window("staff", T0, T1, "run-a"), _window("staff", T0, T2, "run-b")
    _stage(s3, a, b"run a")
    _stage(s3, b, b"run b")
    winner = lake.commit(a, 1)
    loser = lake.commit(b, 2)
    assert winner.status == "written"
    assert loser.status == "skipped"
    assert "run-a" in (loser.reason or "")
    assert [k for k in _keys(s3) if k.startswith("staff/")] == [winner.key]
    assert staging_key("staff", T0, T2, "run-b") not in _keys(s3)


def test_two_runs_with_the_same_window_stage_apart_and_one_commits(s3: Any) -> None:
    # GIVEN two runs held back to the same end time: each stages its own object
    lake = Lake(s3, BUCKET)
    a, b = _window("staff", T0, T1, "run-a"), _window("staff", T0, T1, "run-b")
    _stage(s3, a, b"a")
    _stage(s3, b, b"b")
    assert lake.commit(b, 1).status == "written"
    assert lake.commit(a, 1).status == "skipped"
    assert s3.get_object(Bucket=BUCKET, Key=K1)["Body"].read() == b"b"
    assert not [k for k in _keys(s3) if k.startswith("_staging/")]


def test_the_watermark_is_the_newest_committed_window_end(s3: Any) -> None:
    lake = Lake(s3, BUCKET)
    assert lake.resolve_watermark("staff") == Watermark()
    _committed(lake, s3, _window("staff", None, T0, "run-a"))
    _committed(lake, s3, _window("staff", T0, T1, "run-b"))
    assert lake.resolve_watermark("staff") == Watermark(T1, K1, T1)


def test_the_watermark_carries_the_cursor_end_its_claim_recorded(s3: Any) -> None:
    lake = Lake(s3, BUCKET)
    local_end = datetime(2026, 11, 25, 10, 0)
    window = Window(table="staff", run_id="run-a", end=T0).with_cursor(CursorRange(None, local_end))
    _committed(lake, s3, window)
    assert lake.resolve_watermark("staff").cursor_end == local_end


def test_a_commit_interrupted_after_its_claim_is_finished_by_the_next_lookup(s3: Any) -> None:
    # GIVEN a run that claimed window [T0, T1) and died before copying it
    lake = Lake(s3, BUCKET)
    _committed(lake, s3, _window("staff", None, T0, "run-a"))
    window = _window("staff", T0, T1, "run-b")
    _stage(s3, window, b"b")
    claim = Claim("run-b", T0, T1, K1, staging_key("staff", T0, T1, "run-b"), 1)
    s3.put_object(Bucket=BUCKET, Key=claim_key("staff", T0), Body=claim.to_json())
    # WHEN the next run looks up the watermark THEN the claimed window is committed
    assert lake.resolve_watermark("staff").key == K1
    assert s3.get_object(Bucket=BUCKET, Key=K1)["Body"].read() == b"b"


def test_a_void_claim_whose_staged_object_is_gone_is_removed(s3: Any) -> None:
    lake = Lake(s3, BUCKET)
    claim = Claim("run-x", None, T0, K0, staging_key("staff", None, T0, "run-x"), 1)
    s3.put_object(Bucket=BUCKET, Key=claim_key("staff", None), Body=claim.to_json())
    assert lake.resolve_watermark("staff") == Watermark()
    assert claim_key("staff", None) not in _keys(s3)


def test_payment_never_sees_payment_type_objects(s3: Any) -> None:
    lake = Lake(s3, BUCKET)
    _committed(lake, s3, _window("payment_type", None, T1, "run-a"))
    assert lake.resolve_watermark("payment") == Watermark()


def test_the_listing_follows_pagination_past_a_thousand_keys(s3: Any) -> None:
    for minute in range(1_001):
        end = datetime(2026, 1, 1 + minute // 1440, (minute // 60) % 24, minute % 60)
        s3.put_object(Bucket=BUCKET, Key=generate_file_key("design", end), Body=b"")
    newest = next(newest_keys(s3, BUCKET, "design"))
    assert newest == generate_file_key("design", datetime(2026, 1, 1, 16, 40))


def test_the_listing_descends_years_months_and_days_newest_first(s3: Any) -> None:
    keys = [
        "design/2025/12/31/235959999999.parquet",
        "design/2026/02/01/000000000000.parquet",
        "design/2026/01/31/120000000000.parquet",
    ]
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"")
    assert list(newest_keys(s3, BUCKET, "design")) == sorted(keys, reverse=True)


def test_malformed_objects_never_move_the_watermark(s3: Any) -> None:
    lake = Lake(s3, BUCKET)
    _committed(lake, s3, _window("staff", None, T0, "run-a"))
    for stray in [
        "staff/2030/01/01/notes.txt",
        "staff/9999/x/readme",
        "staff/2031/1/1/0.parquet",
        "staff/2032/01/01/999999999999.parquet.tmp",
    ]:
        s3.put_object(Bucket=BUCKET, Key=stray, Body=b"")
    assert lake.resolve_watermark("staff") == Watermark(T0, K0, T0)


@pytest.mark.parametrize(
    "stray",
    [
        "staff/2026/11/25/090000500000.parquet",  # a little in the future
        "staff/2199/01/01/000000000000.parquet",  # far in the future: would halt the table
    ],
)
def test_a_well_formed_key_no_claim_names_is_ignored(
    s3: Any, stray: str, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a committed window and a stray object with a lake key, newer than it
    lake = Lake(s3, BUCKET)
    _committed(lake, s3, _window("staff", None, T0, "run-a"))
    s3.put_object(Bucket=BUCKET, Key=stray, Body=b"stray")
    # THEN the watermark is still the committed window's end, and the stray is reported
    assert lake.resolve_watermark("staff") == Watermark(T0, K0, T0)
    assert any(getattr(record, "key", None) == stray for record in caplog.records)
    assert stray in _keys(s3)


def test_a_stray_key_copying_a_committed_objects_metadata_is_still_ignored(s3: Any) -> None:
    # GIVEN a copy of a committed file, metadata and all, under a newer key
    lake = Lake(s3, BUCKET)
    _committed(lake, s3, _window("staff", None, T0, "run-a"))
    copy = "staff/2026/11/25/093000000000.parquet"
    s3.copy_object(Bucket=BUCKET, Key=copy, CopySource={"Bucket": BUCKET, "Key": K0})
    # THEN its window's claim names another key, so it is not the watermark
    assert lake.resolve_watermark("staff").key == K0


@pytest.mark.parametrize(
    "body", [b'{"run_id": "run-x", "final_ke', b"[]", b'{"version": 2}', b"\xff" * 10]
)
def test_a_malformed_claim_is_a_lake_error_naming_its_key(s3: Any, body: bytes) -> None:
    # GIVEN a truncated or malformed claim for the table's next window
    lake = Lake(s3, BUCKET)
    _committed(lake, s3, _window("staff", None, T0, "run-a"))
    s3.put_object(Bucket=BUCKET, Key=claim_key("staff", T0), Body=body)
    with pytest.raises(LakeError, match=f"{claim_key('staff', T0)}.*malformed"):
        lake.resolve_watermark("staff")


def test_a_forged_claim_never_moves_or_deletes_an_existing_object(s3: Any) -> None:
    # GIVEN a committed file, and a forged claim naming it as the next window's staged object
    lake = Lake(s3, BUCKET)
    _committed(lake, s3, _window("staff", None, T0, "run-a"), body=b"precious")
    forged = {
        "version": 2,
        "run_id": "run-evil",
        "start": "2026-11-25 09:00:00.000001",
        "end": "2026-11-25 09:05:00.000002",
        "final_key": K1,
        "staging_key": K0,
        "rows": 1,
        "cursor": None,
    }
    s3.put_object(Bucket=BUCKET, Key=claim_key("staff", T0), Body=json.dumps(forged).encode())
    # WHEN the next run looks for its watermark THEN it refuses, and nothing moved
    with pytest.raises(LakeError, match="staging key"):
        lake.resolve_watermark("staff")
    assert s3.get_object(Bucket=BUCKET, Key=K0)["Body"].read() == b"precious"
    assert K1 not in _keys(s3)


def test_a_staged_object_not_staged_for_its_claim_is_never_committed(s3: Any) -> None:
    # GIVEN a claim whose staging key holds an object some other writer put there
    lake = Lake(s3, BUCKET)
    key = staging_key("staff", None, T0, "run-a")
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"not ours")
    claim = Claim("run-a", None, T0, K0, key, 1)
    s3.put_object(Bucket=BUCKET, Key=claim_key("staff", None), Body=claim.to_json())
    with pytest.raises(LakeError, match="not staged for its claim"):
        lake.resolve_watermark("staff")
    assert K0 not in _keys(s3)


def test_a_claim_written_before_version_2_is_still_read(s3: Any) -> None:
    # GIVEN a lake committed by the previous release: claim without window, no metadata
    lake = Lake(s3, BUCKET)
    legacy_staging = "_staging/staff/initial-20261125T090000000001.parquet"
    body = b'{"final_key": "%s", "rows": 1, "run_id": "run-old", "staging_key": "%s"}' % (
        K0.encode(),
        legacy_staging.encode(),
    )
    s3.put_object(Bucket=BUCKET, Key=claim_key("staff", None), Body=body)
    s3.put_object(Bucket=BUCKET, Key=K0, Body=b"old")
    assert lake.resolve_watermark("staff") == Watermark(T0, K0, T0)


def test_a_staged_uncommitted_window_is_found_verified_and_committed_by_a_later_run(
    s3: Any,
) -> None:
    lake = Lake(s3, BUCKET)
    _committed(lake, s3, _window("staff", None, T0, "run-a"))
    staged = _window("staff", T0, T1, "run-b")  # run-b staged it, then died
    _stage(s3, staged, b"rows of b", rows=7)
    found = lake.staged_window("staff", T0, T0, T2)
    assert found is not None
    assert (found.run_id, found.end, found.rows, found.cursor) == ("run-b", T1, 7, staged.cursor)
    # a window that would end past the run's bound, or breaks the cursor chain, is not reused
    assert lake.staged_window("staff", T0, T0, T1 - (T1 - T0) / 2) is None
    assert lake.staged_window("staff", T0, T1, T2) is None
    # run-c commits run-b's staged object: the claim names the run that staged it
    reuse = Window(table="staff", run_id="run-c", start=T0, end=T1, staged_by="run-b")
    reuse = reuse.with_cursor(found.cursor)
    assert lake.verify_staged(reuse).rows == 7
    assert lake.commit(reuse, found.rows).status == "written"
    assert s3.get_object(Bucket=BUCKET, Key=K1)["Body"].read() == b"rows of b"
    assert lake.resolve_watermark("staff").end == T1
    assert lake.staged_window("staff", T0, T0, T2) is None  # consumed


def test_a_staged_object_whose_metadata_disagrees_with_its_key_is_never_reused(
    s3: Any,
) -> None:
    lake = Lake(s3, BUCKET)
    window = _window("staff", None, T0, "run-a")
    s3.put_object(
        Bucket=BUCKET,
        Key=staging_key("staff", None, T0, "run-a"),
        Body=b"forged",
        Metadata={**staged_metadata(window, 3), "totes-end": "20261125T091000000003"},
    )
    assert lake.staged_window("staff", None, None, T2) is None
    with pytest.raises(LakeError, match="missing or not the window's"):
        lake.verify_staged(window)
