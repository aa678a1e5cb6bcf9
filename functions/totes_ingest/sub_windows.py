"""A window cut into sub-windows: its plan in the lake, staged in parallel, committed in order.

When a table's pending range holds more than ``MAX_WINDOW_ROWS`` rows, QueryToParquet
cuts it (``window_plan.plan_windows``) and, instead of extracting it, writes the plan: a JSON
array of the sub-windows' step payloads at ``plan_key(table, run_id)``, under
``_staging/`` (so the staging lifecycle rule expires it). The state machine's
Distributed Map reads that array as its items (ItemReader) and stages each sub-window in
a child execution; CommitWindows then commits them in chain order
(``pipeline.commit_windows``):

- a sub-window's staged object is checked against its window before it is committed
  (``Lake.verify_staged``); one that is missing (its staging failed) stops the chain
  there, with a LakeError naming it: the sub-windows before it stay committed and the
  next run resumes from it, reusing the staged objects after it that still continue the
  chain (``window_plan.plan_windows``);
- a commit skipped because another run committed from the same watermark stops it too;
  a sub-window whose claim is already its own (a retried call, an overlapping run that
  reused the same staged window) is committed: the claim settles it, not the staged
  object its commit deleted;
- the plan is checked to be a chain from the step input's watermark before anything is
  committed (a forged or spoiled plan is a LakeError naming the table), and stays in
  ``_staging/`` after the last commit (the lifecycle rule expires it), so that a retry
  answers the same;
- a step that reaches its time budget returns ``status: "partial"`` with the index to go
  on from, and the state machine calls it again: it is never killed mid-chain.

Only the newest committed sub-window's columns are declared in Glue (read from its
Parquet footer, the one time this step imports pyarrow).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from totes_ingest.aws import lake_errors
from totes_ingest.errors import InvalidEvent, LakeError
from totes_ingest.generate_file_key import plan_key
from totes_ingest.lake import Lake
from totes_ingest.window import Window

if TYPE_CHECKING:
    import pyarrow as pa

Payload = dict[str, Any]

PLAN_INDEX: Final = "plan_index"  # a sub-window payload's place in its plan (from 0)
_MAX_PLAN_BYTES: Final = 256 << 20
_FOOTER_BYTES: Final = 64 << 10  # one ranged GET reads most footers whole


def save_plan(
    lake: Lake, payload: Mapping[str, Any], subs: Sequence[Payload], key_columns: Sequence[str]
) -> Payload:
    """Write the plan of ``subs`` (chain order) and return QueryToParquet's output for it
    (``key_columns``: the table's key, for the Glue catalog CommitWindows keeps)."""
    window = Window.from_payload(payload)
    key = plan_key(window.table, window.run_id)
    items = [{**sub, PLAN_INDEX: i} for i, sub in enumerate(subs)]
    with lake_errors(f"write of {key}", table=window.table):
        lake.s3.put_object(
            Bucket=lake.bucket,
            Key=key,
            Body=json.dumps(items).encode(),
            ContentType="application/json",
        )
    return {
        **payload,
        "windows": len(items),
        "plan": {"bucket": lake.bucket, "key": key},
        "committed": 0,
        "key_columns": list(key_columns),
    }


def load_plan(lake: Lake, payload: Mapping[str, Any]) -> list[Payload]:
    """The sub-window payloads of the plan ``payload`` names, checked to be the table's."""
    window = Window.from_payload(payload)
    table = window.table
    key = plan_key(table, window.run_id)
    if not isinstance(payload.get("plan"), Mapping) or payload["plan"].get("key") != key:
        raise InvalidEvent(f"step input's plan is not {key}", table=table)
    with lake_errors(f"read of {key}", table=table):
        body = lake.s3.get_object(Bucket=lake.bucket, Key=key)["Body"].read(_MAX_PLAN_BYTES + 1)
    try:
        items = json.loads(body) if len(body) <= _MAX_PLAN_BYTES else None
    except ValueError:
        items = None
    if not isinstance(items, list) or not items:
        raise LakeError(f"plan {key} is not a list of sub-windows", table=table)
    # The chain the plan must be: from the step input's watermark (instant and cursor
    # value), each sub-window starting where the one before ends, none past the run's end.
    start, cursor_start = window.start, window.cursor_start
    for i, item in enumerate(items):
        index = item.get(PLAN_INDEX) if isinstance(item, dict) else None
        if type(index) is not int or index != i:
            raise LakeError(f"plan {key}: item {i} is not sub-window {i}", table=table)
        try:
            sub = Window.from_payload(item)
        except InvalidEvent as e:
            raise LakeError(f"plan {key}: item {i} is malformed: {e}", table=table) from e
        if sub.table != table or sub.run_id != window.run_id or sub.cursor is None:
            raise LakeError(f"plan {key}: item {i} is not a sub-window of it", table=table)
        if (
            sub.start != start
            or sub.cursor.start != cursor_start
            or sub.end > window.end
            or (sub.start is not None and sub.start >= sub.end)
        ):
            raise LakeError(
                f"plan {key}: item {i} does not continue the chain from the watermark",
                table=table,
            )
        start, cursor_start = sub.end, sub.cursor.end
    return items


def footer_schema(lake: Lake, key: str, table: str) -> pa.Schema:
    """The Arrow schema of the Parquet object ``key``, from its footer alone (ranged GETs)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from totes_ingest.reread import S3RangeFile

    source = S3RangeFile(lake.s3, lake.bucket, key, table=table)
    try:
        return pq.read_schema(io.BufferedReader(source, buffer_size=_FOOTER_BYTES))
    except pa.ArrowException as e:
        raise LakeError(f"{key} is not a Parquet file: {e}", table=table) from e
