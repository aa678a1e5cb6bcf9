"""The commit protocol: one successor per watermark, retries and races included."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.conftest import BUCKET
from totes_ingest.lake import Claim, Lake, claim_key, staging_key

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 25, 9, 0, 0, 1)
T1 = datetime(2026, 11, 25, 9, 5, 0, 2)
T2 = datetime(2026, 11, 25, 9, 10, 0, 3)


def _stage(s3: Any, table: str, start: datetime | None, end: datetime, body: bytes) -> None:
    s3.put_object(Bucket=BUCKET, Key=staging_key(table, start, end), Body=body)


def _keys(s3: Any) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_commit_publishes_the_staged_object_under_the_window_end(s3: Any) -> None:
    _stage(s3, "staff", None, T0, b"rows")
    result = Lake(s3, BUCKET).commit("staff", None, T0, "run-a", 3)
    assert result.status == "written"
    assert result.key == "staff/2026/11/25/090000000001.parquet"
    assert s3.get_object(Bucket=BUCKET, Key=result.key)["Body"].read() == b"rows"
    assert staging_key("staff", None, T0) not in _keys(s3)


def test_a_retried_commit_writes_the_same_key_once(s3: Any) -> None:
    lake = Lake(s3, BUCKET)
    _stage(s3, "staff", None, T0, b"rows")
    first = lake.commit("staff", None, T0, "run-a", 3)
    second = lake.commit("staff", None, T0, "run-a", 3)
    assert first == second
    assert [k for k in _keys(s3) if k.startswith("staff/")] == [first.key]


def test_a_second_run_racing_for_the_same_watermark_is_skipped(s3: Any) -> None:
    lake = Lake(s3, BUCKET)
    _stage(s3, "staff", T0, T1, b"run a")
    _stage(s3, "staff", T0, T2, b"run b")
    winner = lake.commit("staff", T0, T1, "run-a", 1)
    loser = lake.commit("staff", T0, T2, "run-b", 2)
    assert winner.status == "written"
    assert loser.status == "skipped"
    assert "run-a" in (loser.reason or "")
    assert [k for k in _keys(s3) if k.startswith("staff/")] == [winner.key]
    assert staging_key("staff", T0, T2) not in _keys(s3)


def test_the_watermark_is_the_newest_committed_window_end(s3: Any) -> None:
    lake = Lake(s3, BUCKET)
    assert lake.resolve_watermark("staff") == (None, None)
    _stage(s3, "staff", None, T0, b"a")
    lake.commit("staff", None, T0, "run-a", 1)
    _stage(s3, "staff", T0, T1, b"b")
    lake.commit("staff", T0, T1, "run-b", 1)
    assert lake.resolve_watermark("staff") == (T1, "staff/2026/11/25/090500000002.parquet")


def test_a_commit_interrupted_after_its_claim_is_finished_by_the_next_lookup(s3: Any) -> None:
    # GIVEN a run that claimed window [T0, T1) and died before copying it
    lake = Lake(s3, BUCKET)
    _stage(s3, "staff", None, T0, b"a")
    lake.commit("staff", None, T0, "run-a", 1)
    _stage(s3, "staff", T0, T1, b"b")
    claim = Claim("run-b", "staff/2026/11/25/090500000002.parquet", staging_key("staff", T0, T1), 1)
    s3.put_object(Bucket=BUCKET, Key=claim_key("staff", T0), Body=claim.to_json())
    # WHEN the next run looks up the watermark
    watermark, key = lake.resolve_watermark("staff")
    # THEN the claimed window is committed and is the watermark
    assert (watermark, key) == (T1, claim.final_key)
    assert s3.get_object(Bucket=BUCKET, Key=claim.final_key)["Body"].read() == b"b"


def test_a_void_claim_whose_staged_object_is_gone_is_removed(s3: Any) -> None:
    lake = Lake(s3, BUCKET)
    claim = Claim("run-x", "staff/2026/11/25/090000000001.parquet", "_staging/staff/gone", 1)
    s3.put_object(Bucket=BUCKET, Key=claim_key("staff", None), Body=claim.to_json())
    assert lake.resolve_watermark("staff") == (None, None)
    assert claim_key("staff", None) not in _keys(s3)


def test_payment_never_sees_payment_type_objects(s3: Any) -> None:
    lake = Lake(s3, BUCKET)
    _stage(s3, "payment_type", None, T1, b"x")
    lake.commit("payment_type", None, T1, "run-a", 1)
    assert lake.resolve_watermark("payment") == (None, None)


def test_the_watermark_lookup_follows_pagination_past_a_thousand_keys(s3: Any) -> None:
    for minute in range(1_001):
        end = datetime(2026, 1, 1 + minute // 1440, (minute // 60) % 24, minute % 60)
        s3.put_object(Bucket=BUCKET, Key=f"design/{end:%Y/%m/%d/%H%M%S%f}.parquet", Body=b"")
    watermark, _ = Lake(s3, BUCKET).resolve_watermark("design")
    assert watermark == datetime(2026, 1, 1, 16, 40)


def test_stray_objects_never_move_the_watermark(s3: Any) -> None:
    lake = Lake(s3, BUCKET)
    _stage(s3, "staff", None, T0, b"a")
    lake.commit("staff", None, T0, "run-a", 1)
    for stray in [
        "staff/2030/01/01/notes.txt",
        "staff/9999/x/readme",
        "staff/2031/1/1/0.parquet",
        "staff/2032/01/01/999999999999.parquet.tmp",
    ]:
        s3.put_object(Bucket=BUCKET, Key=stray, Body=b"")
    assert lake.resolve_watermark("staff") == (T0, "staff/2026/11/25/090000000001.parquet")


def test_the_watermark_is_found_across_years_months_and_days(s3: Any) -> None:
    for key in [
        "design/2025/12/31/235959999999.parquet",
        "design/2026/02/01/000000000000.parquet",
        "design/2026/01/31/120000000000.parquet",
    ]:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"")
    watermark, _ = Lake(s3, BUCKET).resolve_watermark("design")
    assert watermark == datetime(2026, 2, 1)


def test_a_loser_sharing_the_winners_staged_object_leaves_it_for_the_winner(s3: Any) -> None:
    # GIVEN two runs held back to the same end time, so they staged the same key
    lake = Lake(s3, BUCKET)
    _stage(s3, "staff", T0, T1, b"same window")
    mine = Claim("run-a", "staff/2026/11/25/090500000002.parquet", staging_key("staff", T0, T1), 1)
    s3.put_object(Bucket=BUCKET, Key=claim_key("staff", T0), Body=mine.to_json())
    # WHEN the loser (run-b) tries to commit before the winner (run-a) has copied
    loser = lake.commit("staff", T0, T1, "run-b", 1)
    # THEN it is skipped without removing the staged object, and the winner still commits
    assert loser.status == "skipped"
    assert lake.commit("staff", T0, T1, "run-a", 1).status == "written"
