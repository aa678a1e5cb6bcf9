"""The ``totes-ingest`` command: arguments, output, the lake directory, and whole runs.

The end-to-end tests (marker ``e2e``) start the command as a user would, in a separate
process, so that what reaches stdout and stderr is exactly what a user sees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pg8000.native
import pytest

from tests.command import CANARY_PASSWORD, database_url, totes_ingest
from totes_ingest.local import cli, lake_dir
from totes_ingest.local.cli import (
    DEFAULT_LAKE,
    CliError,
    build_parser,
    describe_task,
    event_from_args,
    failure_lines,
)
from totes_ingest.local.runner import ExecutionResult, TaskReport
from totes_ingest.local.seed import seed
from totes_ingest.local.totesys import TABLES

# --- arguments ----------------------------------------------------------------------------


@pytest.mark.unit
def test_run_defaults_to_every_table_and_the_local_lake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOTES_DATABASE_URL", raising=False)

    args = build_parser().parse_args(["run"])

    assert event_from_args(args) == {"tables_to_query": list(TABLES)}
    assert args.lake == DEFAULT_LAKE
    assert args.database_url is None
    assert not args.json


@pytest.mark.unit
def test_run_takes_a_table_list() -> None:
    args = build_parser().parse_args(["run", "--tables", "sales_order, payment,", "--json"])

    assert event_from_args(args) == {"tables_to_query": ["sales_order", "payment"]}
    assert args.json


@pytest.mark.unit
def test_run_takes_an_event_file(tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text('{"tables_to_query": ["currency"]}')

    args = build_parser().parse_args(["run", "--event", str(event)])

    assert event_from_args(args) == {"tables_to_query": ["currency"]}


@pytest.mark.unit
def test_an_event_file_that_is_not_json_is_a_clear_error(tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text("tables: all")
    args = build_parser().parse_args(["run", "--event", str(event)])

    with pytest.raises(CliError, match="not JSON"):
        event_from_args(args)


@pytest.mark.unit
@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--tables", "a", "--event", "e.json"],
        ["run", "--tables", ","],
        ["run", "--timeout", "0"],
        ["seed", "--scale", "0"],
        ["simulate", "--changes", "-1"],
        ["frobnicate"],
        [],
    ],
)
def test_bad_arguments_exit_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)

    assert exit_info.value.code == 2
    assert "usage: totes-ingest" in capsys.readouterr().err


@pytest.mark.unit
def test_database_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOTES_DATABASE_URL", "postgresql://u@h/db")

    for command in ("run", "seed", "simulate"):
        assert build_parser().parse_args([command]).database_url == "postgresql://u@h/db"


# --- progress and failure lines -------------------------------------------------------------


@pytest.mark.unit
def test_progress_names_the_table_rows_and_key() -> None:
    report = TaskReport(
        function="CommitTableFunction",
        payload={"table": "sales_order"},
        result={"table": "sales_order", "status": "written", "rows": 1200, "key": "k.parquet"},
        error=None,
        duration_s=0.25,
    )

    assert describe_task(report) == "sales_order: 1,200 rows -> k.parquet (0.2s)"


@pytest.mark.unit
def test_progress_reports_a_handler_error() -> None:
    report = TaskReport(
        function="QueryToParquetFunction",
        payload={"table": "payment"},
        result=None,
        error={"errorType": "SourceError", "errorMessage": "permission denied"},
        duration_s=0.1,
    )

    line = describe_task(report)

    assert line == "payment: QueryToParquet failed (0.1s): SourceError: permission denied"


@pytest.mark.unit
def test_failure_lines_name_each_failed_table() -> None:
    cause = {"failed": {"staff": "SourceError: denied", "payment": "LakeError: no"}, "written": {}}
    result = ExecutionResult("FAILED", None, "TablesFailed", json.dumps(cause), [])

    assert failure_lines(result) == [
        "execution FAILED: TablesFailed",
        "  staff: SourceError: denied",
        "  payment: LakeError: no",
    ]


@pytest.mark.unit
def test_failure_lines_show_a_lambda_error_message() -> None:
    cause = {"errorType": "InvalidEvent", "errorMessage": "'tables_to_query' is empty"}
    result = ExecutionResult("FAILED", None, "InvalidEvent", json.dumps(cause), [])

    assert failure_lines(result)[1] == "  InvalidEvent: 'tables_to_query' is empty"


# --- the lake directory ----------------------------------------------------------------------


@pytest.fixture
def bucket(aws_env: None) -> Any:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="lake", CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    return s3


@pytest.mark.integration
def test_lake_directory_round_trips_through_the_bucket(bucket: Any, tmp_path: Path) -> None:
    root = tmp_path / "lake"
    (root / "sales_order/2024/01/01").mkdir(parents=True)
    (root / "sales_order/2024/01/01/000000000000.parquet").write_bytes(b"old")
    (root / "_staging/sales_order").mkdir(parents=True)
    (root / "_staging/sales_order/x.parquet").write_bytes(b"staged")
    (root / lake_dir.MARKER).write_text("")

    with lake_dir.locked(root) as lake:
        uploaded = lake.upload(bucket, "lake")
        bucket.delete_object(Bucket="lake", Key="_staging/sales_order/x.parquet")
        bucket.put_object(Bucket="lake", Key="payment/2024/01/02/000000000000.parquet", Body=b"new")
        report = lake.download(bucket, "lake", uploaded)

    assert sorted(uploaded) == [
        "_staging/sales_order/x.parquet",
        "sales_order/2024/01/01/000000000000.parquet",
    ]
    assert (report.written, report.deleted, report.unchanged) == (1, 1, 1)
    assert (root / "payment/2024/01/02/000000000000.parquet").read_bytes() == b"new"
    assert not (root / "_staging").exists()
    assert (root / lake_dir.MARKER).exists()


@pytest.mark.integration
def test_a_directory_that_is_not_a_lake_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")

    with pytest.raises(lake_dir.LakeDirError, match="not a local lake"):
        lake_dir.prepare(tmp_path)


@pytest.mark.integration
def test_an_object_key_cannot_escape_the_lake(bucket: Any, tmp_path: Path) -> None:
    root = tmp_path / "lake"
    bucket.put_object(Bucket="lake", Key="../escape.txt", Body=b"x")

    with lake_dir.locked(root) as lake, pytest.raises(lake_dir.LakeDirError, match="cannot be"):
        lake.download(bucket, "lake", [])
    assert not (tmp_path / "escape.txt").exists()


# --- end to end: the command as a user runs it --------------------------------------------------


@pytest.mark.e2e
def test_seed_run_simulate_run_as_a_user_would(db_settings: dict[str, Any], tmp_path: Path) -> None:
    url = database_url(db_settings)
    lake = tmp_path / "lake"
    run = ("run", "--database-url", url, "--lake", str(lake))

    seeded = totes_ingest("seed", "--database-url", url, "--scale", "0.05", cwd=tmp_path)
    first = totes_ingest(*run, "--json", cwd=tmp_path)
    second = totes_ingest(*run, "--json", cwd=tmp_path)
    simulated = totes_ingest("simulate", "--database-url", url, "--changes", "30", cwd=tmp_path)
    third = totes_ingest(*run, cwd=tmp_path)

    for process in (seeded, first, second, simulated, third):
        assert process.returncode == 0, process.stderr
        assert CANARY_PASSWORD not in process.stdout + process.stderr
        assert ":***@" in process.stderr
    assert "sales_order" in seeded.stdout
    # With --json, stdout is exactly the execution's output.
    output = json.loads(first.stdout)
    assert sorted(output) == sorted(TABLES)
    for table, key in output.items():
        assert key.startswith(f"{table}/")
        assert (lake / key).is_file()
    assert "sales_order: 500 rows -> sales_order/" in first.stderr
    # The lake persisted, so the second run is incremental.
    assert json.loads(second.stdout) == {}
    assert "no new rows" in second.stderr
    # The simulated changes are what the third run writes.
    written = dict(line.split("\t") for line in third.stdout.splitlines())
    assert "payment" in written
    assert all((lake / key).is_file() for key in written.values())
    assert set(written) < set(TABLES)
    # The lake's DuckDB views: the current state is one command away.
    assert (tmp_path / "lake.duckdb").is_file()
    query = "SELECT count(*) = count(DISTINCT sales_order_id) FROM sales_order_current"
    current = totes_ingest("sql", query, "--lake", str(lake), cwd=tmp_path)
    assert current.returncode == 0, current.stderr
    assert "true" in current.stdout


@pytest.mark.e2e
def test_a_failed_execution_exits_non_zero_with_the_reasons(
    conn: pg8000.native.Connection, db_settings: dict[str, Any], tmp_path: Path
) -> None:
    seed(conn, 0.01)
    conn.run("ALTER TABLE staff ADD COLUMN bonus money")  # a type with no exact Parquet mapping
    url = database_url(db_settings)
    run = ("run", "--database-url", url, "--lake", str(tmp_path / "lake"), "--json")

    bad_input = totes_ingest(*run, "--tables", "currency,no_such_table", cwd=tmp_path)
    bad_table = totes_ingest(*run, "--tables", "currency,staff", cwd=tmp_path)

    assert bad_input.returncode == 1
    assert bad_input.stdout == ""
    assert "InvalidEvent" in bad_input.stderr
    assert "no_such_table" in bad_input.stderr
    assert bad_table.returncode == 1
    assert bad_table.stdout == ""
    assert "execution FAILED: TablesFailed" in bad_table.stderr
    assert "  staff: " in bad_table.stderr
    assert "currency: 3 rows -> currency/" in bad_table.stderr
    for process in (bad_input, bad_table):
        assert CANARY_PASSWORD not in process.stderr


# The password holds every character that breaks a generic URL parser, between letters
# that appear nowhere else: none of them may reach stdout or stderr.
SECRET_LETTERS = "жыщ"
RAW_PASSWORD = "жы#/?@щ"


@pytest.mark.e2e
@pytest.mark.parametrize("command", ["run", "seed", "simulate"])
@pytest.mark.parametrize(
    ("url", "error"),
    [
        (f"postgresql://ingest:{RAW_PASSWORD}@127.0.0.1:1/totesys", "cannot connect to"),
        (f"postgresql://ingest:{RAW_PASSWORD}@127.0.0.1:port/totesys", "bad database URL"),
        (f"postgres:/ingest:{RAW_PASSWORD}@127.0.0.1/totesys", "bad database URL"),
    ],
    ids=["unreachable", "bad-port", "no-scheme"],
)
def test_a_bad_or_unreachable_url_never_shows_its_password(
    command: str, url: str, error: str, tmp_path: Path
) -> None:
    lake = ("--lake", str(tmp_path / "lake")) if command == "run" else ()

    process = totes_ingest(command, "--database-url", url, *lake, cwd=tmp_path)

    assert process.returncode == 1
    assert process.stdout == ""
    last_line = process.stderr.splitlines()[-1]
    assert last_line.startswith(f"totes-ingest {command}: {error} ")
    assert "Traceback" not in process.stderr
    assert not any(letter in process.stderr for letter in SECRET_LETTERS), process.stderr


@pytest.mark.e2e
def test_audit_finds_repairs_and_then_passes_as_a_user_would(
    db_settings: dict[str, Any], tmp_path: Path
) -> None:
    # GIVEN a seeded, ingested ToteSys in UTC, and a design inserted by a New York session
    url = database_url(db_settings)
    lake = tmp_path / "lake"
    common = ("--database-url", url, "--lake", str(lake))
    assert (
        totes_ingest("seed", "--database-url", url, "--scale", "0.02", cwd=tmp_path).returncode == 0
    )
    admin = pg8000.native.Connection(**db_settings)
    admin.run(f"ALTER DATABASE \"{db_settings['database']}\" SET timezone = 'UTC'")
    assert totes_ingest("run", *common, cwd=tmp_path).returncode == 0
    writer = pg8000.native.Connection(**db_settings)
    writer.run("SET TimeZone = 'America/New_York'")
    writer.run(
        "INSERT INTO design (design_name, file_location, file_name, created_at, last_updated) "
        "VALUES ('Behind', '/x', 'behind.json', now(), now())"
    )
    assert totes_ingest("run", *common, cwd=tmp_path).returncode == 0
    # WHEN a report-only audit runs THEN it names the missing version, writes nothing, exits 2
    files = sorted(p.relative_to(lake) for p in lake.rglob("*") if p.is_file())
    report_only = totes_ingest("audit", *common, "--json", "--no-repair", cwd=tmp_path)
    assert report_only.returncode == 2, report_only.stderr
    found = json.loads(report_only.stdout)
    assert found["whole"] is False
    design = next(t for t in found["tables"] if t["table"] == "design")
    assert (design["missing"], design["repaired"]) == (1, 0)
    assert sorted(p.relative_to(lake) for p in lake.rglob("*") if p.is_file()) == files
    # WHEN the audit repairs THEN it exits 0 with the repair object in the lake
    repaired = totes_ingest("audit", *common, cwd=tmp_path)
    assert repaired.returncode == 0, repaired.stderr
    assert "the lake is whole (1 missing versions repaired)" in repaired.stdout
    (repair,) = lake.glob("design/*/*/*/*-repair-*.parquet")
    assert f"wrote {repair.relative_to(lake)}" in repaired.stdout
    # ... and a second audit finds nothing and writes nothing
    files = sorted(p.relative_to(lake) for p in lake.rglob("*") if p.is_file())
    again = totes_ingest("audit", *common, "--tables", "design,sales_order", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 files written" in again.stderr
    assert again.stdout.splitlines()[-1] == "the lake is whole"
    assert sorted(p.relative_to(lake) for p in lake.rglob("*") if p.is_file()) == files
    assert CANARY_PASSWORD not in again.stdout + again.stderr + repaired.stderr
    writer.close()
    admin.close()


@pytest.mark.integration
def test_a_run_that_wrote_and_deleted_nothing_keeps_the_duckdb_file(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    (tmp_path / "lake.duckdb").write_bytes(b"the views of the last run")

    # The database is never reached: nothing is rebuilt.
    kept = cli._refresh_duckdb(
        lake, "postgresql://nobody@127.0.0.1:1/none", lake_dir.SyncReport(0, 0, 154)
    )

    assert kept == tmp_path / "lake.duckdb"
    assert kept.read_bytes() == b"the views of the last run"
