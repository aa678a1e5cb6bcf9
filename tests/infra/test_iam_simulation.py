"""Every S3 request a step really makes is allowed by its role, as the template grants it.

The real step code runs against moto while a hook records each S3 request; each request
is translated into the IAM action(s) and resource(s) S3 authorizes it by, and evaluated
against the step's role from the transformed template (IAM wildcards: ``*`` any run,
``?`` one character). A HEAD or GET answered 404 also needs s3:ListBucket: without it S3
answers 403, which the lake code would take for a failure. S3 evaluates that ListBucket
with the missing key as its s3:prefix, so the roles' s3:prefix conditions must cover it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pg8000.native
import pytest
from boto3.s3.transfer import TransferConfig

from tests.conftest import BUCKET
from totes_ingest import lake as lake_module
from totes_ingest import pipeline, write_to_s3
from totes_ingest.audit import AuditSettings
from totes_ingest.audit_step import audit_one
from totes_ingest.cursor import CursorRange
from totes_ingest.format_time import format_time
from totes_ingest.generate_file_key import claim_key, staging_key
from totes_ingest.lake import Claim, Lake, staged_metadata
from totes_ingest.window import Window

pytestmark = pytest.mark.infra

T0 = datetime(2026, 11, 25, 9, 0, 0, 1)
T1 = datetime(2026, 11, 25, 9, 5, 0, 2)
BIG = b"x" * (9 * 1024 * 1024)  # past 8 MB: multipart copy, where the fixture below allows it
PSEUDO = {"AWS::Partition": "aws", "AWS::Region": "eu-west-2", "AWS::AccountId": "123456789012"}

# (IAM action, resource ARN, s3:prefix of the request: the listed prefix, or for a HEAD or
# GET answered 404 the key, as S3 checks ListBucket then; None for other requests)
Grant = tuple[str, str, str | None]


# -- the roles, as deployed -----------------------------------------------------------


def resolve(value: Any) -> str:
    """An ARN of the transformed template with the stack's bucket created (CreateBucket)."""
    if isinstance(value, str):
        text = value
        for name, pseudo in PSEUDO.items():
            text = text.replace("${" + name + "}", pseudo)
        return text
    ((function, argument),) = value.items()
    if function == "Ref":
        return BUCKET if argument == "IngestBucket" else PSEUDO.get(argument, str(argument))
    if function == "Fn::If":
        return resolve(argument[1])
    if function == "Fn::GetAtt":
        return f"arn:aws:resource:::{argument[0]}"
    if function == "Fn::Sub":
        pattern, variables = (argument, {}) if isinstance(argument, str) else argument
        for name, variable in variables.items():
            pattern = pattern.replace("${" + name + "}", resolve(variable))
        return resolve(pattern)
    raise AssertionError(f"unexpected intrinsic {function}")


def iam_glob(pattern: str) -> re.Pattern[str]:
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    )


def allowed_by(transformed: dict[str, Any], role: str) -> Callable[[Grant], bool]:
    statements = []
    for policy in transformed["Resources"][role]["Properties"].get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            branch = statement["Fn::If"][1] if "Fn::If" in statement else statement
            if "Effect" in branch:
                statements.append(branch)
    rules = [
        (
            [iam_glob(a) for a in _list(s["Action"])],
            [iam_glob(resolve(r)) for r in _list(s["Resource"])],
            _prefix_condition(s),
        )
        for s in statements
        if s["Effect"] == "Allow"
    ]

    def allows(grant: Grant) -> bool:
        action, resource, prefix = grant
        return any(
            any(a.fullmatch(action) for a in actions)
            and any(r.fullmatch(resource) for r in resources)
            and (
                prefixes is None
                or (prefix is not None and any(p.fullmatch(prefix) for p in prefixes))
            )
            for actions, resources, prefixes in rules
        )

    return allows


def _prefix_condition(statement: dict[str, Any]) -> list[re.Pattern[str]] | None:
    """The statement's ``StringLike s3:prefix`` patterns; None without that condition.

    (The only other condition of the S3 roles is kms:ViaService, on their KMS grants.)
    """
    patterns = statement.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
    if patterns is None:
        return None
    return [iam_glob(p) for p in _list(patterns)]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# -- what the step code asks of S3 ----------------------------------------------------


class Recorder:
    """The S3 requests a boto3 client makes, with the status each was answered with."""

    def __init__(self, client: Any):
        self.calls: list[dict[str, Any]] = []
        client.meta.events.register("before-parameter-build.s3.*", self._before)
        client.meta.events.register("after-call.s3.*", self._after)

    def _before(
        self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any
    ) -> None:
        call = {"operation": model.name, "params": dict(params), "status": None}
        context["recorded_call"] = call
        self.calls.append(call)

    def _after(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["recorded_call"]["status"] = parsed["ResponseMetadata"]["HTTPStatusCode"]

    def needs(self) -> set[Grant]:
        return {grant for call in self.calls for grant in needed_grants(call)}


def needed_grants(call: dict[str, Any]) -> list[Grant]:
    operation, params = call["operation"], call["params"]
    bucket = f"arn:aws:s3:::{params['Bucket']}"
    key = f"{bucket}/{params.get('Key')}"
    if operation in ("ListObjectsV2", "ListObjects"):
        return [("s3:ListBucket", bucket, params.get("Prefix"))]
    if operation in ("GetObject", "HeadObject"):
        missing = [("s3:ListBucket", bucket, params["Key"])] if call["status"] == 404 else []
        return [("s3:GetObject", key, None), *missing]
    if operation in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"):
        return [("s3:PutObject", key, None)]
    if operation in ("CopyObject", "UploadPartCopy"):
        source = params["CopySource"]
        if isinstance(source, dict):
            source = f"{source['Bucket']}/{source['Key']}"
        return [("s3:PutObject", key, None), ("s3:GetObject", f"arn:aws:s3:::{source}", None)]
    if operation == "AbortMultipartUpload":
        return [("s3:AbortMultipartUpload", key, None)]
    if operation == "ListParts":
        return [("s3:ListMultipartUploadParts", key, None)]
    if operation == "DeleteObject":
        return [("s3:DeleteObject", key, None)]
    raise AssertionError(f"the step calls S3 {operation}: map it to its IAM action here")


@pytest.fixture
def recorder(s3: Any) -> Recorder:
    return Recorder(s3)


def denied(transformed: dict[str, Any], step: str, recorder: Recorder) -> list[Grant]:
    allows = allowed_by(transformed, f"{step}Role")
    return sorted(grant for grant in recorder.needs() if not allows(grant))


def payload(table: str, **more: Any) -> dict[str, Any]:
    return {"table": table, "end_time": format_time(T1), "run_id": "run-sim", **more}


@pytest.fixture
def multipart_above_8mb(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploads and commits of more than 8 MB go in parts (the SDK's default threshold),
    as files above write_to_s3.SINGLE_PUT_BYTES do: the roles must allow that path too."""
    monkeypatch.setattr(write_to_s3, "SINGLE_PUT_BYTES", 8 << 20)
    monkeypatch.setattr(lake_module, "_COPY_CONFIG", TransferConfig())


def staged(
    s3: Any, table: str, start: datetime | None, end: datetime, run: str, body: bytes
) -> Window:
    """A run's extract of ``[start, end)``, staged as QueryToParquet stages it."""
    window = Window(table=table, run_id=run, start=start, end=end)
    window = window.with_cursor(CursorRange(start, end))
    s3.put_object(
        Bucket=BUCKET,
        Key=staging_key(table, start, end, run),
        Body=body,
        Metadata=staged_metadata(window, 1),
    )
    return window


def commit_payload(table: str, end: datetime = T1) -> dict[str, Any]:
    cursor = {"start": None, "end": format_time(end), "reread_from": None}
    return {**payload(table), "start_time": None, "rows": 3, "cursor": cursor}


# -- the steps ------------------------------------------------------------------------


def test_get_last_ingest_time_may_read_an_empty_tables_watermark(
    s3: Any, recorder: Recorder, transformed: dict[str, Any]
) -> None:
    pipeline.find_watermark(payload("staff"), Lake(s3, BUCKET))

    assert recorder.calls
    assert denied(transformed, "GetLastIngestTime", recorder) == []


@pytest.mark.usefixtures("multipart_above_8mb")
def test_get_last_ingest_time_may_finish_an_interrupted_multipart_commit(
    s3: Any, recorder: Recorder, transformed: dict[str, Any]
) -> None:
    # GIVEN a claim whose staged object was never copied to its table key
    staged(s3, "staff", None, T0, "run-old", BIG)
    claim = Claim(
        run_id="run-old",
        start=None,
        end=T0,
        final_key="staff/2026/11/25/090000000001.parquet",
        staging_key=staging_key("staff", None, T0, "run-old"),
        rows=3,
    )
    s3.put_object(Bucket=BUCKET, Key=claim_key("staff", None), Body=claim.to_json())
    recorder.calls.clear()

    # WHEN the watermark is looked up
    result = pipeline.find_watermark(payload("staff"), Lake(s3, BUCKET))

    # THEN the commit was finished, with nothing the role does not grant
    assert result["last_key"] == claim.final_key
    assert {c["operation"] for c in recorder.calls} >= {"UploadPartCopy", "DeleteObject"}
    assert denied(transformed, "GetLastIngestTime", recorder) == []


def test_get_last_ingest_time_may_remove_a_void_claim(
    s3: Any, recorder: Recorder, transformed: dict[str, Any]
) -> None:
    claim = Claim(
        run_id="run-old",
        start=None,
        end=T0,
        final_key="staff/2026/11/25/090000000001.parquet",
        staging_key=staging_key("staff", None, T0, "run-old"),
        rows=3,
    )
    s3.put_object(Bucket=BUCKET, Key=claim_key("staff", None), Body=claim.to_json())
    recorder.calls.clear()

    pipeline.find_watermark(payload("staff"), Lake(s3, BUCKET))

    assert any(
        c["params"].get("Key", "").startswith("_claims/")
        for c in recorder.calls
        if c["operation"] == "DeleteObject"
    )
    assert denied(transformed, "GetLastIngestTime", recorder) == []


@pytest.mark.usefixtures("multipart_above_8mb")
def test_commit_table_may_commit_a_multipart_window(
    s3: Any, recorder: Recorder, transformed: dict[str, Any]
) -> None:
    staged(s3, "staff", None, T1, "run-sim", BIG)
    recorder.calls.clear()

    result = pipeline.commit_table(commit_payload("staff"), Lake(s3, BUCKET))

    assert result["status"] == "written"
    assert denied(transformed, "CommitTable", recorder) == []


def test_commit_table_may_lose_a_race_for_the_window(
    s3: Any, recorder: Recorder, transformed: dict[str, Any]
) -> None:
    # GIVEN another run already committed the window starting at the same watermark
    lake = Lake(s3, BUCKET)
    lake.commit(staged(s3, "staff", None, T0, "run-other", b"theirs"), 1)
    staged(s3, "staff", None, T1, "run-sim", b"mine")
    recorder.calls.clear()

    result = pipeline.commit_table(commit_payload("staff"), lake)

    assert result["status"] == "skipped"
    assert denied(transformed, "CommitTable", recorder) == []


@pytest.mark.integration
def test_query_to_parquet_may_stage_a_window_and_read_the_previous_files_schema(
    s3: Any, recorder: Recorder, transformed: dict[str, Any], totesys_settings: dict[str, Any]
) -> None:
    # GIVEN a committed previous window, and currency rows below and after its end
    conn = pg8000.native.Connection(**{k: v for k, v in totesys_settings.items() if v != ""})
    lake = Lake(s3, BUCKET)
    for minute in (58, 59):
        conn.run(
            "INSERT INTO currency (currency_code, created_at, last_updated) VALUES ('GBP', :t, :t)",
            t=datetime(2026, 11, 25, 8, minute),
        )
    first = pipeline.stage_table(
        payload("currency", end_time=format_time(T0), start_time=None, cursor_start=None),
        conn,
        lake,
        row_group_rows=1024,
    )
    pipeline.commit_table(first, lake)

    # WHEN the next window is staged, re-reading the previous file's versions
    conn.run(
        "INSERT INTO currency (currency_code, created_at, last_updated) VALUES ('USD', :t, :t)",
        t=datetime(2026, 11, 25, 9, 2),
    )
    try:
        mark = pipeline.find_watermark(payload("currency"), lake)
        recorder.calls.clear()
        result = pipeline.stage_table(mark, conn, lake, row_group_rows=1024)
    finally:
        conn.close()

    assert result["rows"] == 1
    assert any(c["params"].get("Range") for c in recorder.calls)
    assert denied(transformed, "QueryToParquet", recorder) == []


def test_the_grants_of_one_step_do_not_cover_another_steps_requests(
    s3: Any, recorder: Recorder, transformed: dict[str, Any]
) -> None:
    staged(s3, "staff", None, T1, "run-sim", b"rows")
    recorder.calls.clear()

    pipeline.commit_table(commit_payload("staff"), Lake(s3, BUCKET))

    assert denied(transformed, "QueryToParquet", recorder) != []
    assert len(denied(transformed, "StartRun", recorder)) == len(recorder.needs())


def test_no_step_may_list_the_whole_bucket_nor_commit_table_a_tables_folders(
    transformed: dict[str, Any],
) -> None:
    whole_bucket: Grant = ("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", None)
    table_folder: Grant = ("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", "staff/")

    for step in ("GetLastIngestTime", "QueryToParquet", "CommitTable"):
        assert not allowed_by(transformed, f"{step}Role")(whole_bucket)
    assert not allowed_by(transformed, "CommitTableRole")(table_folder)


@pytest.mark.integration
def test_audit_table_may_repair_tombstone_and_hold_its_lease_and_nothing_more(
    s3: Any, recorder: Recorder, transformed: dict[str, Any], totesys_settings: dict[str, Any]
) -> None:
    # GIVEN a committed currency table, then a version it lost and a row deleted
    conn = pg8000.native.Connection(**{k: v for k, v in totesys_settings.items() if v != ""})
    lake = Lake(s3, BUCKET)
    settings = pipeline.RunSettings(
        fallback_lag_seconds=0, max_concurrency=1, safety_margin_seconds=0
    )
    try:
        for code in ("GBP", "USD", "EUR"):
            conn.run("INSERT INTO currency (currency_code) VALUES (:c)", c=code)
        run = pipeline.start_run({"tables_to_query": ["currency"]}, conn, settings)
        item = {"table": "currency", **{k: run[k] for k in ("end_time", "run_id", "hold")}}
        item["source_timezone"] = run["source_timezone"]
        item = pipeline.find_watermark(item, lake)
        pipeline.commit_table(pipeline.stage_table(item, conn, lake, row_group_rows=1024), lake)
        conn.run(
            "INSERT INTO currency (currency_code, last_updated) "
            "VALUES ('JPY', now() - interval '1 hour')"
        )
        conn.run("DELETE FROM currency WHERE currency_code = 'USD'")
        recorder.calls.clear()
        # WHEN the AuditTable step audits it
        found = audit_one(
            {"table": "currency", "audit_id": "audit-sim"},
            conn,
            lake,
            AuditSettings(),
            lease_ttl=timedelta(minutes=16),
        )
    finally:
        conn.close()

    # THEN it repaired and tombstoned, and every request it made is the role's
    assert (found["repaired"], found["deleted"], found["tombstoned"]) == (1, 1, 1)
    operations = {c["operation"] for c in recorder.calls}
    assert {"PutObject", "DeleteObject", "GetObject", "ListObjectsV2"} <= operations
    assert denied(transformed, "AuditTable", recorder) == []


def test_audit_table_may_not_write_a_windows_key_a_claim_or_staging(
    transformed: dict[str, Any],
) -> None:
    allows = allowed_by(transformed, "AuditTableRole")
    bucket = f"arn:aws:s3:::{BUCKET}"

    for key in (
        "currency/2026/11/25/090000000001.parquet",
        "_claims/currency/2026/11/25/090000000001.json",
        "_staging/currency/x.parquet",
    ):
        assert not allows(("s3:PutObject", f"{bucket}/{key}", None))
        assert not allows(("s3:DeleteObject", f"{bucket}/{key}", None))
    assert allows(
        ("s3:PutObject", f"{bucket}/currency/2026/11/25/090000000001-repair-0.parquet", None)
    )
    assert not allows(("s3:ListBucket", bucket, None))


def test_query_to_parquet_may_plan_and_stage_sub_windows_and_commit_table_commit_them(
    s3: Any, recorder: Recorder, transformed: dict[str, Any], totesys_settings: dict[str, Any]
) -> None:
    from totes_ingest.generate_file_key import generate_file_key
    from totes_ingest.sub_windows import footer_schema, load_plan

    # GIVEN a table whose window holds more rows than the bound
    conn = pg8000.native.Connection(**{k: v for k, v in totesys_settings.items() if v != ""})
    lake = Lake(s3, BUCKET)
    for minute in range(6):
        conn.run(
            "INSERT INTO currency (currency_code, created_at, last_updated) VALUES ('GBP', :t, :t)",
            t=datetime(2026, 11, 25, 8, minute),
        )
    start = payload("currency", end_time=format_time(T0), start_time=None, cursor_start=None)
    try:
        # WHEN QueryToParquet plans it and stages its sub-windows
        recorder.calls.clear()
        plan = pipeline.stage_table(start, conn, lake, row_group_rows=1024, max_window_rows=2)
        assert denied(transformed, "QueryToParquet", recorder) == []
        items = load_plan(lake, plan)  # the Distributed Map's read, not the function's
        recorder.calls.clear()
        for item in items:
            pipeline.stage_table(item, conn, lake, row_group_rows=1024)
    finally:
        conn.close()
    assert plan["windows"] == 3
    assert denied(transformed, "QueryToParquet", recorder) == []

    # AND CommitWindows commits them (and reads the newest file's footer for Glue)
    recorder.calls.clear()
    assert pipeline.commit_windows(plan, lake)["status"] == "written"
    footer_schema(lake, generate_file_key("currency", T0), "currency")
    assert denied(transformed, "CommitTable", recorder) == []
