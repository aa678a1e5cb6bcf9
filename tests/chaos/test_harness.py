"""The chaos harness itself: seeded faults, S3 fault timing, session kills, atomic
conditional puts, and several executions at once on one local deployment."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from typing import Any
from unittest import mock

import boto3
import pg8000.exceptions
import pg8000.native
import pytest
from botocore.exceptions import ClientError

from tests.chaos.faults import HEAVY, ChaosCrash, FaultPlan, Intensity, SessionKiller
from tests.chaos.machine import LocalDeployment, serialized_s3
from tests.conftest import BUCKET, REGION
from tests.lakecheck import duplicated_versions, mismatches, table_files
from totes_ingest.db_connections import APPLICATION_NAME
from totes_ingest.errors import LakeUnavailable
from totes_ingest.local.dburl import Connect
from totes_ingest.local.runner import TaskReport
from totes_ingest.local.seed import seed

ALWAYS = Intensity(
    "always", step_rate=1.0, s3_rate=1.0, kill_interval_s=(0.05, 0.1), s3_delay_s=(0.0, 0.01)
)


def _outcomes(seed_value: int, calls: int) -> list[str]:
    """What each of ``calls`` calls of a faulty step did: ok, or the fault's kind."""
    plan = FaultPlan(seed_value)
    plan.enabled, plan.intensity = True, HEAVY
    done: list[int] = []
    step = plan.wrap_step("step", done.append, lambda args: "t", LakeUnavailable, LakeUnavailable)
    outcomes = []
    for i in range(calls):
        before = len(done)
        try:
            step(i)
            outcomes.append("ok")
        except (LakeUnavailable, ChaosCrash) as e:
            moment = "after" if len(done) > before else "before"
            outcomes.append(f"{moment} {type(e).__name__}")
    return outcomes


@pytest.mark.unit
def test_a_seed_always_draws_the_same_faults() -> None:
    first = _outcomes(11, 300)
    assert _outcomes(11, 300) == first
    assert _outcomes(12, 300) != first
    kinds = Counter(first)
    assert {"ok", "before LakeUnavailable", "after LakeUnavailable"} <= set(kinds)
    assert {"before ChaosCrash", "after ChaosCrash"} <= set(kinds)


@pytest.mark.unit
def test_a_disabled_plan_injects_nothing() -> None:
    plan = FaultPlan(1)
    plan.intensity = ALWAYS
    step = plan.wrap_step("step", lambda: 42, lambda args: "t", LakeUnavailable, LakeUnavailable)
    assert [step() for _ in range(50)] == [42] * 50
    assert not plan.injected


@pytest.mark.integration
def test_s3_faults_fail_a_request_before_or_after_the_bucket_carries_it_out(s3: Any) -> None:
    # GIVEN a client whose every request is hit
    plan = FaultPlan(5)
    plan.enabled, plan.intensity = True, ALWAYS
    client = plan.faulty_s3_client(lambda: boto3.client("s3", region_name=REGION))()
    # WHEN it writes keys, then deletes them
    failed_puts = 0
    for i in range(60):
        try:
            client.put_object(Bucket=BUCKET, Key=f"t/{i}", Body=b"x")
        except ClientError:
            failed_puts += 1
    stored = {item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    for key in sorted(stored):
        with contextlib.suppress(ClientError):
            client.delete_object(Bucket=BUCKET, Key=key)
    # THEN a held-up request is carried out, one failed "after" the bucket was written
    # (its response lost), one failed "before" it never reached the bucket
    puts = {kind: n for kind, n in plan.injected.items() if kind.startswith("s3 PutObject")}
    delayed = puts.get("s3 PutObject delayed", 0)
    after = sum(n for kind, n in puts.items() if " after " in kind)
    before = sum(n for kind, n in puts.items() if " before " in kind)
    assert delayed + after + before == 60
    assert min(delayed, after, before) > 0
    assert failed_puts == after + before
    assert len(stored) == delayed + after
    left = {item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    assert left == plan.refused_deletes


@pytest.mark.integration
def test_the_session_killer_terminates_only_the_pipelines_sessions(
    totesys_settings: dict[str, Any], connect: Connect
) -> None:
    # GIVEN a session of the pipeline and another one
    pipeline = connect(totesys_settings, application_name=APPLICATION_NAME)
    other = connect(totesys_settings)
    plan = FaultPlan(3)
    plan.enabled, plan.intensity = True, ALWAYS
    killer = SessionKiller(totesys_settings, plan)
    try:
        # WHEN the killer runs a little
        killer.start()
        deadline = time.monotonic() + 10
        while not plan.injected and time.monotonic() < deadline:
            time.sleep(0.05)
        killer.stop()
        # THEN the pipeline's session is gone and the other one is not
        assert plan.injected["db terminate session"] >= 1
        with pytest.raises((pg8000.exceptions.DatabaseError, pg8000.exceptions.InterfaceError)):
            pipeline.run("SELECT 1")
        assert other.run("SELECT 1") == [[1]]
    finally:
        killer.stop_quietly()
        other.close()
        with contextlib.suppress(pg8000.exceptions.InterfaceError, OSError):
            pipeline.close()


@pytest.mark.integration
def test_conditional_puts_have_one_winner_as_on_s3(s3: Any) -> None:
    from moto.s3.responses import S3Response

    original = S3Response._get_checksum

    def slow_checksum(self: Any, headers: Any) -> Any:
        # Widen moto's gap between checking for the key and writing it.
        time.sleep(0.002)
        return original(self, headers)

    def winners(key: str) -> int:
        clients = [boto3.client("s3", region_name=REGION) for _ in range(6)]
        start = threading.Barrier(len(clients))
        won: list[int] = []

        def claim(client: Any, i: int) -> None:
            start.wait()
            try:
                client.put_object(Bucket=BUCKET, Key=key, Body=b"%d" % i, IfNoneMatch="*")
                won.append(i)
            except ClientError:
                pass

        threads = [threading.Thread(target=claim, args=(c, i)) for i, c in enumerate(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        return len(won)

    with mock.patch.object(S3Response, "_get_checksum", slow_checksum):
        # moto alone lets several racing claims win ...
        assert max(winners(f"plain/{i}") for i in range(5)) > 1
        # ... S3, and moto made atomic, exactly one
        with serialized_s3():
            assert [winners(f"atomic/{i}") for i in range(5)] == [1] * 5


@pytest.mark.e2e
def test_overlapping_executions_on_one_deployment_commit_each_window_once(
    db_secret: dict[str, Any], s3: Any, monkeypatch: pytest.MonkeyPatch, connect: Connect
) -> None:
    # GIVEN a seeded database and nothing in the lake
    monkeypatch.setenv("END_TIME_SAFETY_MARGIN_SECONDS", "0")
    conn = connect(db_secret)
    tables = ["currency", "department", "staff", "design"]
    try:
        seed(conn, scale=0.02)
        tasks: list[TaskReport] = []
        # WHEN two executions over the same tables start together
        with LocalDeployment(on_task=tasks.append) as machine:
            results = machine.run_together(
                [{"tables_to_query": tables}, {"tables_to_query": tables[::-1]}],
                delays_s=[0.0, 0.05],
                timeout_s=120,
            )
        # THEN both succeed, and each table has one file, equal to the database
        assert [r.status for r in results] == ["SUCCEEDED", "SUCCEEDED"], results[1].describe()
        assert len({r.execution_arn for r in results}) == 2
        assert sum(t.function == "StartRunFunction" for t in tasks) == 2
        for table in tables:
            assert len(table_files(s3, table)) == 1
            assert mismatches(conn, s3, table) == []
            assert duplicated_versions(s3, table) == []
    finally:
        conn.close()


@pytest.mark.integration
def test_each_spoiled_plan_is_refused_but_a_truncated_one(conn: Any, s3: Any) -> None:
    import json
    import random

    from tests.chaos.faults import _SPOILS, _spoiled
    from totes_ingest import pipeline
    from totes_ingest.errors import LakeError
    from totes_ingest.lake import Lake
    from totes_ingest.sub_windows import load_plan

    # GIVEN a saved plan of five sub-windows
    conn.run("CREATE TABLE t (id serial PRIMARY KEY, last_updated timestamp NOT NULL)")
    conn.run(
        "INSERT INTO t (last_updated) SELECT TIMESTAMP '2026-01-01' + g * interval '1 ms' "
        "FROM generate_series(1, 500) AS g"
    )
    lake = Lake(s3, BUCKET)
    payload = {"table": "t", "run_id": "run-" + "a" * 32, "end_time": "2026-01-02 00:00:00.000000"}
    planned = pipeline.stage_table(
        pipeline.find_watermark({**payload, "source_timezone": "UTC", "hold": None}, lake),
        conn,
        lake,
        row_group_rows=1024,
        max_window_rows=100,
    )
    key = planned["plan"]["key"]
    items = load_plan(lake, planned)
    assert len(items) == 5
    for how in _SPOILS:
        # WHEN the chaos spoils it THEN CommitWindows refuses it, or reads a shorter chain
        s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(items).encode())
        if how == "vanished":
            s3.delete_object(Bucket=BUCKET, Key=key)
        else:
            body = _spoiled(how, items, random.Random(how))
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        if how == "truncated":
            shorter = load_plan(lake, planned)
            assert shorter == items[: len(shorter)]
            assert len(shorter) < len(items)
        else:
            with pytest.raises(LakeError) as refused:
                load_plan(lake, planned)
            assert refused.value.table == "t"
