"""The real state machine definition, executed by moto with the real handlers."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from tests.conftest import REGION, SECRET_NAME
from tests.e2e.conftest import Captured
from tests.lakecheck import duplicated_versions, lake_keys, mismatches, table_files
from totes_ingest.local.runner import ExecutionResult, run_state_machine
from totes_ingest.local.simulate import simulate
from totes_ingest.local.totesys import TABLES

pytestmark = pytest.mark.e2e

EVENTS = "events/state_machine_input.json"
TIMEOUT_S = 120


@pytest.fixture(autouse=True)
def no_safety_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """No writer runs beside these tests, so a run may read right up to the clock."""
    monkeypatch.setenv("END_TIME_SAFETY_MARGIN_SECONDS", "0")


def run(tables: list[str] | tuple[str, ...] = TABLES) -> ExecutionResult:
    return run_state_machine({"tables_to_query": list(tables)}, timeout_s=TIMEOUT_S)


def succeeded(result: ExecutionResult) -> dict[str, str]:
    assert result.succeeded, result.describe()
    assert isinstance(result.output, dict)
    return result.output


def test_the_sample_input_is_every_totesys_table(repo_root: Any) -> None:
    event = json.loads((repo_root / EVENTS).read_text())
    assert sorted(event["tables_to_query"]) == sorted(TABLES)


def test_first_run_ingests_every_table_with_values_equal_to_the_database(
    source: Any, s3: Any, logs: Captured
) -> None:
    result = run()
    output = succeeded(result)
    assert sorted(output) == sorted(TABLES)
    for table, key in output.items():
        assert table_files(s3, table) == [key]
        assert key.startswith(f"{table}/")
        assert key.endswith(".parquet")
        assert mismatches(source, s3, table) == []
    assert not [k for k in lake_keys(s3) if k.startswith("_staging/")]
    wrote = [r for r in logs.at("INFO") if r["message"] == "Wrote parquet"]
    assert {r["table"] for r in wrote} == set(TABLES)
    # every line names the execution it belongs to
    assert {r["execution"] for r in wrote} == {result.execution_arn.rsplit(":", 1)[-1]}


def test_an_immediate_second_run_returns_nothing_and_writes_nothing(
    source: Any, s3: Any, logs: Captured
) -> None:
    succeeded(run())
    before = lake_keys(s3)
    assert succeeded(run()) == {}
    assert [k for k in lake_keys(s3) if not k.startswith("_claims/")] == [
        k for k in before if not k.startswith("_claims/")
    ]
    assert len([r for r in logs.at("WARNING") if r["message"] == "No new rows"]) == len(TABLES)


def test_after_changes_a_run_ingests_exactly_the_changed_rows(source: Any, s3: Any) -> None:
    # GIVEN a lake holding the whole database
    first = succeeded(run())
    # WHEN the application inserts and updates rows
    changed = simulate(source, changes=40, seed=7)
    second = succeeded(run())
    # THEN the run writes one new file per changed table, holding exactly those versions
    assert set(second) == {table for table, n in changed.items() if n}
    for table, key in second.items():
        assert key > first[table]
        assert table_files(s3, table) == [first[table], key]
    for table in TABLES:
        assert mismatches(source, s3, table) == []
        assert duplicated_versions(s3, table) == []


def test_an_empty_table_is_left_out_and_logs_a_warning(
    db_secret: dict[str, Any], s3: Any, logs: Captured
) -> None:
    output = succeeded(run(["currency", "department"]))
    assert output == {}
    warned = {r["table"] for r in logs.at("WARNING") if r["message"] == "No new rows"}
    assert warned == {"currency", "department"}
    assert lake_keys(s3) == []


def test_a_failing_table_leaves_the_others_committed_and_fails_the_execution(
    source: Any, s3: Any, logs: Captured
) -> None:
    # GIVEN a table with a column type that has no faithful Parquet mapping
    source.run("ALTER TABLE staff ADD COLUMN bonus money")
    # WHEN a run ingests it beside healthy tables
    result = run(["currency", "staff", "design"])
    # THEN the others are committed, and the execution fails naming the table and why
    assert result.status == "FAILED"
    assert result.error == "TablesFailed"
    cause = json.loads(result.cause or "{}")
    assert set(cause["failed"]) == {"staff"}
    assert "UnsupportedColumnType" in cause["failed"]["staff"]
    assert "bonus" in cause["failed"]["staff"]
    assert set(cause["written"]) == {"currency", "design"}
    assert table_files(s3, "staff") == []
    assert len(table_files(s3, "currency")) == len(table_files(s3, "design")) == 1
    assert any(r.get("table") == "staff" for r in logs.at("CRITICAL"))


def test_a_failed_table_keeps_its_watermark_and_the_next_run_picks_it_up(
    source: Any, s3: Any
) -> None:
    source.run("ALTER TABLE staff ADD COLUMN bonus money")
    assert run(["staff"]).status == "FAILED"
    source.run("ALTER TABLE staff DROP COLUMN bonus")
    output = succeeded(run(["staff"]))
    assert list(output) == ["staff"]
    assert mismatches(source, s3, "staff") == []


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({}, "no 'tables_to_query'"),
        ({"tables_to_query": "staff"}, "must be a list"),
        ({"tables_to_query": []}, "empty"),
        ({"tables_to_query": ["staff", "staff"]}, "duplicate"),
        ({"tables_to_query": [42]}, "not valid table names"),
        ({"tables_to_query": ["staff; DROP TABLE currency"]}, "not valid table names"),
        ({"tables_to_query": ["pg_class"]}, "not tables of the source"),
        ({"tables_to_query": ["sales"]}, "not tables of the source"),
    ],
)
def test_bad_input_fails_with_a_named_error_and_changes_nothing(
    source: Any, s3: Any, logs: Captured, event: dict[str, Any], message: str
) -> None:
    result = run_state_machine(event, timeout_s=TIMEOUT_S)
    assert result.status == "FAILED"
    assert result.error == "InvalidEvent"
    assert message in (result.cause or "")
    assert lake_keys(s3) == []
    assert source.run("SELECT count(*) FROM currency") == [[3]]
    assert any(message in r.get("reason", "") for r in logs.at("CRITICAL"))


def test_no_credential_appears_in_logs_outputs_or_history(
    source: Any, s3: Any, logs: Captured, db_secret: dict[str, Any]
) -> None:
    # GIVEN a secret with a password (trust authentication ignores it)
    password = "Pa55-never-log-me"
    boto3.client("secretsmanager", region_name=REGION).put_secret_value(
        SecretId=SECRET_NAME, SecretString=json.dumps({**db_secret, "password": password})
    )
    source.run("ALTER TABLE staff ADD COLUMN bonus money")
    # WHEN runs succeed, fail per table, and fail on input
    results = [run(["currency", "staff"]), run_state_machine({"x": 1}, timeout_s=TIMEOUT_S)]
    # THEN the password is nowhere
    seen = "\n".join(logs.lines) + "".join(
        json.dumps([r.output, r.error, r.cause, r.history], default=str) for r in results
    )
    assert "Wrote parquet" in seen
    assert password not in seen
