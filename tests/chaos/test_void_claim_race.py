"""A void claim's removal, held up in flight, must never remove a newer claim.

The sequence (found while building the chaos test; deterministic here):

1. a commit claimed watermark ``W`` but its staged object vanished, so the claim is void;
2. run C's watermark lookup reads the void claim and sends its removal, which S3 (or the
   client's retries under throttling) holds up;
3. run D's lookup removes the same void claim, stages its window and claims ``W``;
4. C's removal lands and removes D's claim; C's lookup answers ``W``;
5. C claims ``W`` again, which succeeds: two windows start at ``W`` and every row
   version in both is in the lake twice.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import boto3
import pytest

from tests.conftest import BUCKET, REGION
from tests.lakecheck import table_files
from totes_ingest.cursor import CursorRange
from totes_ingest.generate_file_key import claim_key, generate_file_key, staging_key
from totes_ingest.lake import Claim, Lake, Watermark, staged_metadata
from totes_ingest.window import Window

pytestmark = pytest.mark.integration

T1 = datetime(2026, 11, 25, 9, 5, 0, 1)
T2 = datetime(2026, 11, 25, 9, 10, 0, 2)
T3 = datetime(2026, 11, 25, 9, 15, 0, 3)


def _stage(s3: Any, start: datetime | None, end: datetime, run: str) -> Window:
    window = Window(table="staff", run_id=run, start=start, end=end)
    window = window.with_cursor(CursorRange(start, end))
    s3.put_object(
        Bucket=BUCKET,
        Key=staging_key("staff", start, end, run),
        Body=b"rows",
        Metadata=staged_metadata(window, 1),
    )
    return window


def _claim_naming(s3: Any, start: datetime | None) -> str:
    key = claim_key("staff", start)
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return Claim.parse(body, key=key, table="staff").final_key


def test_a_held_up_removal_of_a_void_claim_leaves_a_newer_claim_alone(s3: Any) -> None:
    # GIVEN a void claim on the table's first window: claimed, never copied, nothing staged
    void = Claim(
        "run-a",
        None,
        T1,
        generate_file_key("staff", T1),
        staging_key("staff", None, T1, "run-a"),
        3,
    )
    s3.put_object(Bucket=BUCKET, Key=claim_key("staff", None), Body=void.to_json())
    # ... and run C, whose removal of a claim is held up until D has committed
    held, release = threading.Event(), threading.Event()

    def hold_up(params: dict[str, Any], **_: Any) -> None:
        if params["Key"].startswith("_claims/") and not held.is_set():
            held.set()
            release.wait(10)

    c_client = boto3.client("s3", region_name=REGION)
    c_client.meta.events.register("before-parameter-build.s3.DeleteObject", hold_up)
    c_lake, d_lake = Lake(c_client, BUCKET), Lake(s3, BUCKET)
    found: list[Watermark] = []
    lookup = threading.Thread(target=lambda: found.append(c_lake.resolve_watermark("staff")))
    lookup.start()
    try:
        assert held.wait(10), "C never removed the void claim"
        # WHEN D removes the void claim itself and commits its window meanwhile
        assert d_lake.resolve_watermark("staff") == Watermark()
        assert d_lake.commit(_stage(s3, None, T2, "run-d"), 1).status == "written"
    finally:
        release.set()
        lookup.join(10)
    # ... and C, its lookup over, commits its own window from the watermark it found
    ((mark,),) = (found,)
    c_lake.commit(_stage(s3, mark.end, T3, "run-c"), 1)
    # THEN every window starts where the previous one ended: no row version twice
    files = table_files(s3, "staff")
    assert files[0] == generate_file_key("staff", T2)
    assert _claim_naming(s3, None) == files[0]
    assert files in ([files[0]], [files[0], generate_file_key("staff", T3)])
    if len(files) == 2:
        assert _claim_naming(s3, T2) == files[1]
