"""``totes-ingest``: run the whole pipeline on a laptop, and make data for it to ingest.

``run`` executes the real state machine (statemachine/ingest.asl.json, wired as
template.yaml wires it) in moto, with the real handlers answering its Lambda tasks in this
process, against a PostgreSQL (embedded unless ``--database-url``) and a local directory
standing in for the bucket. ``seed`` fills a database with ToteSys data; ``simulate``
applies business changes so the next ``run`` has something to ingest.

Nothing here talks to AWS: every AWS call is answered by moto, with fake credentials.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final, TextIO

import pg8000.native

from totes_ingest.local import dburl, lake_dir
from totes_ingest.local.dburl import redact, settings_from_url
from totes_ingest.local.runner import (
    ExecutionResult,
    TaskReport,
    TemplateError,
    environment_applied,
    run_state_machine,
)
from totes_ingest.local.seed import SeedError, seed, totesys_tables_present
from totes_ingest.local.simulate import SimulationError, simulate
from totes_ingest.local.totesys import TABLES

DATABASE_URL_ENV: Final = "TOTES_DATABASE_URL"
PGDATA_ENV: Final = "TOTES_PGDATA"
DEFAULT_PGDATA: Final = Path(".totesys-pg")
DEFAULT_LAKE: Final = Path("lake")
DEFAULT_TIMEOUT_S: Final = 900.0

REGION: Final = "eu-west-2"
LOCAL_BUCKET: Final = "totes-ingest-local"
LOCAL_SECRET: Final = "totes-ingest/local/totesys"  # noqa: S105 - a name, not a password
_APPLICATION_NAME: Final = "totes-ingest-local"

# Variables that could send boto3 somewhere other than moto, or fail before it is reached.
_AWS_VARIABLES_CLEARED: Final = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_LAMBDA",
    "AWS_ENDPOINT_URL_SFN",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    "AWS_ENDPOINT_URL_IAM",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)
_FAKE_AWS: Final = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}


class CliError(RuntimeError):
    """A failure explained to the user in one line (exit status 1)."""


# --- arguments --------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def _table_list(text: str) -> list[str]:
    tables = [name.strip() for name in text.split(",") if name.strip()]
    if not tables:
        raise argparse.ArgumentTypeError("name at least one table")
    return tables


def _add_database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        metavar="URL",
        default=os.environ.get(DATABASE_URL_ENV),
        help=f"the ToteSys PostgreSQL, postgresql://user:password@host:port/db "
        f"(default: ${DATABASE_URL_ENV}, else an embedded PostgreSQL in ${PGDATA_ENV} "
        f"or ./{DEFAULT_PGDATA})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="totes-ingest",
        description="Run the totes-ingest state machine locally (moto, no AWS account) "
        "and make ToteSys data for it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="execute the state machine once",
        description="Execute statemachine/ingest.asl.json with the real handlers, "
        "in moto, against a PostgreSQL and a local lake directory.",
    )
    which = run.add_mutually_exclusive_group()
    which.add_argument(
        "--tables",
        type=_table_list,
        metavar="A,B",
        help="tables to ingest (default: all eleven ToteSys tables)",
    )
    which.add_argument(
        "--event",
        type=Path,
        metavar="FILE",
        help="execution input JSON file (- for stdin), e.g. events/state_machine_input.json",
    )
    _add_database_url(run)
    run.add_argument(
        "--lake",
        type=Path,
        default=DEFAULT_LAKE,
        metavar="DIR",
        help=f"local stand-in for the bucket (default: ./{DEFAULT_LAKE})",
    )
    run.add_argument(
        "--json", action="store_true", help="print exactly the execution's output JSON on stdout"
    )
    run.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"give up on the execution after this long (default: {DEFAULT_TIMEOUT_S:g})",
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="every step on stderr, with the handlers' INFO logs and metrics, "
        "and the event history of a failed execution",
    )

    audit_cmd = commands.add_parser(
        "audit",
        help="prove the lake against the source: repair missing versions, record deletes",
        description="Compare each table's (primary key, last_updated) pairs in the "
        "source with the lake's; write the versions the lake lacks (once, as repair "
        "objects that never move the watermark) and a tombstone for each deleted key. "
        "Exit 0 when the lake is whole, 2 when it is not, 1 on an error.",
    )
    audit_cmd.add_argument(
        "--tables",
        type=_table_list,
        metavar="A,B",
        help="tables to audit (default: all eleven ToteSys tables)",
    )
    _add_database_url(audit_cmd)
    audit_cmd.add_argument(
        "--lake",
        type=Path,
        default=DEFAULT_LAKE,
        metavar="DIR",
        help=f"local stand-in for the bucket (default: ./{DEFAULT_LAKE})",
    )
    audit_cmd.add_argument(
        "--json", action="store_true", help="print exactly the audit's report JSON on stdout"
    )
    horizon = audit_cmd.add_mutually_exclusive_group()
    horizon.add_argument(
        "--full", action="store_true", help="judge every version, not only the horizon's"
    )
    horizon.add_argument(
        "--horizon-days",
        type=_positive_float,
        default=None,
        metavar="DAYS",
        help="judge the versions of the last DAYS days of last_updated "
        "(default: $AUDIT_HORIZON_DAYS, else 7)",
    )
    audit_cmd.add_argument(
        "--no-repair",
        dest="repair",
        action="store_false",
        help="report only: write no repair object and no tombstone",
    )
    audit_cmd.add_argument(
        "-v", "--verbose", action="store_true", help="the audit's logs and metrics on stderr"
    )

    seed_cmd = commands.add_parser(
        "seed",
        help="create the ToteSys schema and fill it with sample data",
        description="Create the ToteSys schema (if absent) and fill it with realistic, "
        "deterministic data. A database whose ToteSys tables hold rows is refused "
        "unless --force.",
    )
    _add_database_url(seed_cmd)
    seed_cmd.add_argument(
        "--scale",
        type=_positive_float,
        default=1.0,
        metavar="N",
        help="multiply the growing tables (scale 1: 10,000 sales orders; 100: a million)",
    )
    seed_cmd.add_argument(
        "--force", action="store_true", help="empty the ToteSys tables first if they hold rows"
    )

    sim = commands.add_parser(
        "simulate",
        help="apply business changes, for the next run to ingest",
        description="Insert and update rows as the ToteSys application would "
        "(last_updated = now()): new orders with their transactions and payments, "
        "payments received, contacts and addresses edited...",
    )
    _add_database_url(sim)
    sim.add_argument(
        "--changes",
        type=_non_negative_int,
        default=100,
        metavar="N",
        help="number of business changes (default: 100)",
    )
    sim.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="S",
        help="random seed, to repeat the same choices",
    )

    sql = commands.add_parser(
        "sql",
        help="query the lake's DuckDB views (raw, _current, _tombstones)",
        description="Run a query on the DuckDB file `run` keeps beside the lake folder "
        "(LAKE.duckdb): every table, <table>_current and <table>_tombstones are views "
        "over the lake's Parquet files.",
    )
    sql.add_argument("query", help='e.g. "SELECT count(*) FROM sales_order_current"')
    sql.add_argument(
        "--lake", type=Path, default=DEFAULT_LAKE, help="the lake folder (default: ./lake)"
    )
    return parser


def event_from_args(args: argparse.Namespace) -> Any:
    """The execution input: ``--event`` file, ``--tables`` list, or every table."""
    if args.event is not None:
        try:
            text = sys.stdin.read() if str(args.event) == "-" else args.event.read_text()
            return json.loads(text)
        except OSError as e:
            raise CliError(f"cannot read {args.event}: {e.strerror}") from e
        except ValueError as e:
            raise CliError(f"{args.event} is not JSON: {e}") from e
    return {"tables_to_query": args.tables or list(TABLES)}


# --- database ---------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def database_url(url: str | None) -> tuple[str, bool]:
    """The URL to use and whether it is the embedded server (started if needed)."""
    if url:
        return url, False
    from totes_ingest.local.embedded import embedded_database_url

    data_dir = Path(os.environ.get(PGDATA_ENV) or DEFAULT_PGDATA)
    try:
        embedded = embedded_database_url(data_dir)
    except Exception as e:  # pgserver raises its own types; say what failed, chained
        raise CliError(f"cannot start the embedded PostgreSQL in {data_dir}: {e}") from e
    say(f"embedded PostgreSQL in {data_dir}")
    return embedded, True


def connect(url: str) -> pg8000.native.Connection:
    """A connection from a database URL; errors name the URL without its password."""
    try:
        settings = settings_from_url(url)
    except ValueError as e:
        raise CliError(f"bad database URL {redact(url)}: {e}") from e
    try:
        return dburl.connect(settings, application_name=_APPLICATION_NAME)
    except (pg8000.exceptions.InterfaceError, pg8000.exceptions.DatabaseError, OSError) as e:
        detail = e.args[0].get("M") if e.args and isinstance(e.args[0], dict) else e
        raise CliError(f"cannot connect to {redact(url)}: {detail}") from e


@contextmanager
def connection(url: str) -> Iterator[pg8000.native.Connection]:
    conn = connect(url)
    try:
        yield conn
    finally:
        conn.close()


def _print_counts(counts: Mapping[str, int], out: TextIO) -> None:
    width = max(len(t) for t in counts)
    for table, count in counts.items():
        print(f"{table:<{width}}  {count:>10,}", file=out)


def cmd_seed(args: argparse.Namespace) -> int:
    url, _ = database_url(args.database_url)
    say(f"seeding {redact(url)} at scale {args.scale:g}")
    started = time.perf_counter()
    with connection(url) as conn:
        counts = seed(conn, args.scale, force=args.force)
    _print_counts(counts, sys.stdout)
    say(f"seeded {sum(counts.values()):,} rows in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    url, _ = database_url(args.database_url)
    started = time.perf_counter()
    with connection(url) as conn:
        counts = simulate(conn, args.changes, seed=args.seed)
    _print_counts({t: n for t, n in counts.items() if n} or counts, sys.stdout)
    say(
        f"{args.changes} changes ({sum(counts.values()):,} row versions) applied to "
        f"{redact(url)} in {time.perf_counter() - started:.1f}s"
    )
    return 0


def _ensure_seeded(url: str) -> None:
    """On first use of the embedded database, create and seed ToteSys."""
    with connection(url) as conn:
        if totesys_tables_present(conn):
            return
        say("first run: creating and seeding ToteSys (scale 1)")
        counts = seed(conn)
    say(f"seeded {sum(counts.values()):,} rows")


# --- run ----------------------------------------------------------------------------------


@contextmanager
def fake_aws_environment() -> Iterator[None]:
    """Fake credentials and a fixed region; nothing that could point boto3 elsewhere."""
    with environment_applied(_FAKE_AWS, unset=_AWS_VARIABLES_CLEARED):
        yield


@contextmanager
def handler_output(*, verbose: bool) -> Iterator[None]:
    """Keep stdout for the result: what the handlers print (Powertools logs and EMF
    metrics) goes to stderr when ``verbose``, else nowhere (progress lines say enough).

    Redirected at the file descriptor, since Powertools binds its log stream when a
    handler module is first imported.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    target = os.dup(2) if verbose else os.open(os.devnull, os.O_WRONLY)
    os.dup2(target, 1)
    os.close(target)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


class Progress:
    """One stderr line per step that matters, from concurrent Map iterations.

    Times are per table, from the start of its first step, so a table's line says how
    long the whole table took.
    """

    def __init__(self, out: TextIO, *, verbose: bool) -> None:
        self.out = out
        self.verbose = verbose
        self.lock = threading.Lock()
        self.table_started: dict[str, float] = {}

    def __call__(self, report: TaskReport) -> None:
        payload = report.payload if isinstance(report.payload, dict) else {}
        table = payload.get("table")
        now = time.monotonic()
        with self.lock:
            elapsed = None
            if isinstance(table, str):
                started = self.table_started.setdefault(table, now - report.duration_s)
                elapsed = now - started
            line = describe_task(report, verbose=self.verbose, elapsed_s=elapsed)
            if line:
                print(line, file=self.out, flush=True)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def describe_task(
    report: TaskReport, *, verbose: bool = False, elapsed_s: float | None = None
) -> str | None:
    """A progress line for one Lambda invocation (None: not worth a line).

    ``elapsed_s`` is the table's time so far; without it, the invocation's own time.
    """
    payload = report.payload if isinstance(report.payload, dict) else {}
    result = report.result if isinstance(report.result, dict) else {}
    table = str(payload.get("table") or result.get("table") or "")
    took = f"({report.duration_s if elapsed_s is None else elapsed_s:.1f}s)"
    step = report.function.removesuffix("Function")
    if report.error is not None:
        where = f"{table}: " if table else ""
        return (
            f"{where}{step} failed {took}: {report.error.get('errorType')}: "
            f"{report.error.get('errorMessage')}"
        )
    if step == "StartRun":
        return (
            f"run {result.get('run_id')}: {_count(len(result.get('tables') or []), 'table')}, "
            f"rows last updated before {result.get('end_time')} {took}"
        )
    if step == "QueryToParquet" and int(result.get("windows") or 1) > 1:
        return f"{table}: cut into {result['windows']} sub-windows, staged in parallel {took}"
    if step == "QueryToParquet" and "plan_index" in payload and verbose:
        rows = f"{result.get('rows'):,} rows"
        return f"{table}: sub-window {payload['plan_index'] + 1} staged, {rows} {took}"
    if step == "QueryToParquet" and result.get("rows") == 0:
        return f"{table}: no new rows since {payload.get('start_time') or 'the beginning'} {took}"
    if step == "CommitTable":
        if result.get("status") == "written":
            return f"{table}: {result.get('rows'):,} rows -> {result.get('key')} {took}"
        if result.get("status") == "partial":
            return f"{table}: {result.get('committed')} sub-windows committed, more to come {took}"
        return f"{table}: {result.get('status')} ({result.get('reason')}) {took}"
    if verbose:
        return f"{table or '-'}: {step} done {took}"
    return None


def failure_lines(result: ExecutionResult) -> list[str]:
    """Why the execution failed, one line per failed table where known."""
    lines = [f"execution {result.status}: {result.error}"]
    cause: Any = result.cause
    with suppress(ValueError):
        cause = json.loads(cause) if isinstance(cause, str) else cause
    if isinstance(cause, dict) and isinstance(cause.get("failed"), dict):
        lines.extend(f"  {table}: {reason}" for table, reason in cause["failed"].items())
    elif isinstance(cause, dict) and "errorMessage" in cause:
        lines.append(f"  {cause.get('errorType')}: {cause['errorMessage']}")
    elif cause:
        lines.append(f"  {cause}")
    return lines


def _handler_environment(verbose: bool) -> dict[str, str]:
    """What the handlers read, pointing at the local bucket and secret."""
    return {
        "INGEST_BUCKET": LOCAL_BUCKET,
        "DB_SECRET_NAME": LOCAL_SECRET,
        "DB_SSL_MODE": "disable",
        "POWERTOOLS_LOG_LEVEL": "INFO" if verbose else "WARNING",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }


def execute(
    event: Any, url: str, lake: lake_dir.LocalLake, *, timeout_s: float, verbose: bool
) -> tuple[ExecutionResult, lake_dir.SyncReport]:
    """One execution inside its own mocked AWS account, the (locked) lake synced around it."""
    from moto import mock_aws

    from totes_ingest.aws import reused_clients, s3_client, secrets_client

    settings = settings_from_url(url)
    with (
        fake_aws_environment(),
        mock_aws(
            config={
                "stepfunctions": {"execute_state_machine": True},
                "lambda": {"use_docker": False},
            }
        ),
        reused_clients(),  # one S3 and one Secrets Manager client for all the handlers
    ):
        # The handlers' own clients (reused for the whole run), made here a little earlier.
        s3_client().create_bucket(
            Bucket=LOCAL_BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        secrets_client().create_secret(Name=LOCAL_SECRET, SecretString=json.dumps(settings))
        with lake.serve(LOCAL_BUCKET) as served:
            with handler_output(verbose=verbose):
                result = run_state_machine(
                    event,
                    timeout_s=timeout_s,
                    environment=_handler_environment(verbose),
                    on_task=Progress(sys.stderr, verbose=verbose),
                    # Shown for a failed execution only (with --verbose): fetched only then.
                    history="on_failure",
                )
            synced = served.write_back()
        say(f"lake {lake.root}: {_count(len(served.loaded), 'file')} read")
    return result, synced


def cmd_run(args: argparse.Namespace) -> int:
    event = event_from_args(args)
    # Held for the whole run: a second run on this lake is refused at once.
    with lake_dir.locked(args.lake) as lake:
        url, embedded = database_url(args.database_url)
        if embedded:
            _ensure_seeded(url)
        else:
            connect(url).close()  # fail early, and clearly, on a wrong URL
        say(f"source {redact(url)}; lake {args.lake}")
        result, synced = execute(event, url, lake, timeout_s=args.timeout, verbose=args.verbose)
        database = _refresh_duckdb(args.lake, url, synced)
    say(f"lake {args.lake}: DuckDB views in {database} (totes-ingest sql QUERY)")
    say(
        f"lake {args.lake}: {synced.written} files written, {synced.deleted} deleted, "
        f"{synced.unchanged} unchanged"
    )
    if not result.succeeded:
        for line in failure_lines(result):
            say(line)
        if args.verbose:
            say(result.describe())
        return 1
    say(
        f"execution SUCCEEDED in {result.duration_s:.1f}s: "
        f"{_count(len(result.output or {}), 'table')} with new rows"
    )
    if args.json:
        print(json.dumps(result.output))
    else:
        for table, key in (result.output or {}).items():
            print(f"{table}\t{key}")
    return 0


# --- audit -------------------------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    import uuid

    from totes_ingest.audit import AuditSettings

    tables = args.tables or list(TABLES)
    settings = AuditSettings.from_environment(
        full=args.full, repair=args.repair, horizon_days=args.horizon_days
    )
    audit_id = f"audit-{uuid.uuid4().hex}"
    with lake_dir.locked(args.lake) as lake:
        url, embedded = database_url(args.database_url)
        if embedded:
            _ensure_seeded(url)
        say(f"source {redact(url)}; lake {args.lake}")
        started = time.perf_counter()
        reports, synced = _audit_in_moto(tables, url, lake, settings, audit_id, args.verbose)
        _refresh_duckdb(args.lake, url, synced)  # repairs and tombstones: views must see them
    say(
        f"lake {args.lake}: {synced.written} files written, "
        f"audited in {time.perf_counter() - started:.1f}s"
    )
    whole = all(report["status"] in WHOLE for report in reports)
    if args.json:
        print(json.dumps({"audit_id": audit_id, "whole": whole, "tables": reports}))
    else:
        print_audit(reports, settings.repair, sys.stdout)
    if any(report["status"] == "failed" for report in reports):
        return 1  # a table could not be judged: an error, not a verdict
    return 0 if whole else 2


WHOLE: Final = ("whole", "repaired", "skipped")


def _audit_in_moto(
    tables: list[str],
    url: str,
    lake: lake_dir.LocalLake,
    settings: Any,
    audit_id: str,
    verbose: bool,
) -> tuple[list[dict[str, Any]], lake_dir.SyncReport]:
    import boto3
    from moto import mock_aws

    from totes_ingest.audit import audit_tables
    from totes_ingest.errors import InvalidEvent
    from totes_ingest.lake import Lake
    from totes_ingest.observability import logger

    with fake_aws_environment(), mock_aws(), connection(url) as conn:
        s3 = boto3.client("s3")
        s3.create_bucket(
            Bucket=LOCAL_BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        logger.setLevel("INFO" if verbose else "WARNING")
        with lake.serve(LOCAL_BUCKET) as served:
            with handler_output(verbose=verbose):
                try:
                    found = audit_tables(
                        conn, Lake(s3, LOCAL_BUCKET), tables, settings, audit_id=audit_id
                    )
                except InvalidEvent as e:
                    raise CliError(str(e)) from e
            synced = served.write_back()
    return [report.to_payload() for report in found], synced


_AUDIT_COLUMNS: Final = (
    ("status", "status"),
    ("source_rows", "source rows"),
    ("lake_versions", "lake versions"),
    ("missing", "missing"),
    ("repaired", "repaired"),
    ("newer_in_lake", "newer in lake"),
    ("deleted", "deleted"),
    ("tombstoned", "tombstoned"),
)


def print_audit(reports: list[dict[str, Any]], repair: bool, out: TextIO) -> None:
    """One screen: a line per table, the first few findings, and the verdict."""
    width = max([len("table"), *(len(r["table"]) for r in reports)])
    head = "  ".join(f"{label:>{max(len(label), 9)}}" for _, label in _AUDIT_COLUMNS)
    print(f"{'table':<{width}}  {head}", file=out)
    for report in reports:
        cells = []
        for name, label in _AUDIT_COLUMNS:
            value = report[name]
            text = f"{value:,}" if isinstance(value, int) else str(value)
            cells.append(f"{text:>{max(len(label), 9)}}")
        print(f"{report['table']:<{width}}  {'  '.join(cells)}", file=out)
    for report in reports:
        for kind, examples in report["examples"].items():
            print(f"  {report['table']} {kind.replace('_', ' ')}: {'; '.join(examples)}", file=out)
        if report["reason"] and report["status"] != "whole":
            print(f"  {report['table']}: {report['reason']}", file=out)
        for key in [*report["repair_keys"], report["tombstone_key"]]:
            if key:
                print(f"  {report['table']}: wrote {key}", file=out)
    whole = all(r["status"] in WHOLE for r in reports)
    missing = sum(r["missing"] for r in reports)
    verdict = "the lake is whole" if whole else "the lake is NOT whole"
    if missing and repair:
        verdict += f" ({missing:,} missing versions repaired)"
    elif missing:
        verdict += f" ({missing:,} missing versions, not repaired: report only)"
    print(verdict, file=out)


def _refresh_duckdb(lake: Path, url: str, synced: lake_dir.SyncReport) -> Path:
    """The lake's DuckDB file, rebuilt with each table's key read from the source, unless
    the run wrote and deleted no file and the file is there: the views read the folders'
    files when queried, and only a new file can change a table's columns, while building
    them reads the schema of every file of the lake."""
    from totes_ingest import config
    from totes_ingest.local.duckdb_lake import build, database_path, lake_tables

    existing = database_path(lake)
    if synced.written == 0 and synced.deleted == 0 and existing.is_file():
        return existing
    from totes_ingest.source import resolve_tables

    tables = lake_tables(lake)
    with connection(url) as conn:
        sources = resolve_tables(conn, tables, config.source_schema()) if tables else {}
    return build(lake, {name: source.key for name, source in sources.items()})


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    from totes_ingest.local.duckdb_lake import database_path

    path = database_path(args.lake)
    if not path.exists():
        say(f"no {path}: run `totes-ingest run --lake {args.lake}` first")
        return 1
    con = duckdb.connect(str(path), read_only=True)
    try:
        con.sql(args.query).show(max_width=200)
    except duckdb.Error as e:
        say(f"query failed: {e}")
        return 1
    finally:
        con.close()
    return 0


_COMMANDS: Final = {
    "run": cmd_run,
    "seed": cmd_seed,
    "simulate": cmd_simulate,
    "sql": cmd_sql,
    "audit": cmd_audit,
}


# glibc's mallopt parameter, and the size from which an allocation gets its own mapping:
# below the 8 MiB of an S3 part, above the extract's per-chunk numpy arrays (measured:
# glibc's initial 128 KiB kept 10 MB less at peak for twice the system CPU).
_M_MMAP_THRESHOLD: Final = -3
_MMAP_THRESHOLD_BYTES: Final = 4 * 1024 * 1024


def return_freed_memory() -> None:
    """Give large freed blocks back to the system at once (glibc only; elsewhere a no-op).

    glibc raises its mmap threshold (up to 32 MB) each time a mapped block is freed, so
    after the first upload the multi-megabyte buffers of a run (S3 parts, staged Parquet
    bodies, moto's copies of them), allocated on many threads, come from per-thread
    arenas that are never trimmed: a whole run kept about twice the memory it used at
    any moment. Setting the threshold (as ``MALLOC_MMAP_THRESHOLD_`` would at start-up)
    stops that adjustment: each such buffer gets its own mapping, returned when freed, at
    the price of mapping it afresh (more system CPU). What runs is unchanged.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return  # not glibc (macOS, musl): its allocator is left as it is
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``totes-ingest`` console script; the process exit status.

    The process ends when it returns: what the command made is frozen out of the
    garbage collector (see :func:`skip_final_collection`).
    """
    args = build_parser().parse_args(argv)
    return_freed_memory()
    try:
        return _COMMANDS[args.command](args)
    except (CliError, SeedError, SimulationError, lake_dir.LakeDirError, TemplateError) as e:
        say(f"totes-ingest {args.command}: {e}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        skip_final_collection()


def skip_final_collection() -> None:
    """Spare the exiting interpreter its last garbage collection.

    A run leaves millions of objects behind (moto's backends and parsed ASL, botocore's
    models, pyarrow), and the collection the interpreter makes as it exits walks them
    all: 0.25 s of a 2 s run. Every file, connection, lock and temporary folder a
    command opens it closes in a ``with`` block, and atexit handlers still run, so the
    objects are frozen (``gc.freeze``): the interpreter's exit tears down what it always
    does, without searching them for reference cycles, which the process's end reclaims.
    """
    gc.freeze()
