"""Benchmark: the audit's time and peak RSS over a table of N rows with a year of history.

For each N a throwaway database holds a ``sales_order``-shaped table (the ToteSys DDL
without foreign keys) whose N rows were last updated evenly over the 365 days before
now, and a lake built by the pipeline's own steps (``start_run``, ``find_watermark``,
``stage_table``, ``commit_table``) as 365 daily windows, one committed file each, in a
bucket of a separate ``moto_server`` process (so the audit's process holds none of the
lake's bytes, as with S3). Then ``audit_table`` runs in a child process of its own,
``--repeat`` times, with the default horizon (7 days) and ``--full``, alternating, each
timed from outside (wall, and peak RSS from ``wait4``). Every audit must find the lake
whole: it writes nothing.

Usage: ``python benchmarks/audit_bench.py [--rows 1000000,10000000] [--repeat 3]
[--database-url URL]`` (default: the local server over TCP). See benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# Before the library is imported: its logger reads the level once.
for _name, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "eu-west-2",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "POWERTOOLS_LOG_LEVEL": "ERROR",
}.items():
    os.environ.setdefault(_name, _value)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_bench import (  # noqa: E402
    ORDER_VALUES,
    _create_database,
    _sales_order_ddl,
    _with_database,
)

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TABLE = "sales_order"
BUCKET = "totes-audit-bench"
DAYS = 365
# ``extract_bench``'s realistic values; ``last_updated`` spread evenly over the year.
FILL = f"""
INSERT INTO {TABLE}
SELECT g,
{ORDER_VALUES}       to_char(date '2025-11-03' + (g % 365)::int, 'YYYY-MM-DD'),
       to_char(date '2025-11-04' + (g % 365)::int, 'YYYY-MM-DD'),
       1 + abs(hashint8(g + 7)) % 30,
       CAST(:start AS timestamp) + (g - 1) * (interval '{DAYS} days' / CAST(:rows AS bigint)),
       CAST(:start AS timestamp) + (g - 1) * (interval '{DAYS} days' / CAST(:rows AS bigint))
FROM generate_series(1, CAST(:rows AS bigint)) AS g
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,10000000", help="table sizes, commas")
    parser.add_argument("--repeat", type=int, default=3, help="audits of each kind (median)")
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument(
        "--partition-keys", type=int, default=None, help="AUDIT_PARTITION_KEYS (default its own)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.partition_keys:
        os.environ["AUDIT_PARTITION_KEYS"] = str(args.partition_keys)
    if args.worker:
        _audit(args.database_url, args.full)
        return
    port = _free_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(port)
        for rows in (int(n) for n in args.rows.split(",")):
            _bench(rows, args)
    finally:
        server.terminate()
        server.wait()


def _bench(rows: int, args: argparse.Namespace) -> None:
    url = _with_database(args.database_url, f"totes_bench_audit_{rows}")
    started = time.perf_counter()
    files = _prepare(args.database_url, url, rows)
    print(
        f"{rows:,} rows, {files} files over {DAYS} days: ready in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    runs: dict[str, list[tuple[float, float, dict[str, Any]]]] = {"horizon": [], "full": []}
    for _ in range(args.repeat):
        for kind in runs:
            runs[kind].append(_measure(url, full=kind == "full"))
    for kind, measured in runs.items():
        report = measured[-1][2]
        wall = statistics.median(m[0] for m in measured)
        peak = statistics.median(m[1] for m in measured)
        print(
            f"  audit ({'--full' if kind == 'full' else '7-day horizon'}), n={len(measured)}: "
            f"median {wall:.2f} s (min {min(m[0] for m in measured):.2f}, max "
            f"{max(m[0] for m in measured):.2f}), peak RSS {peak:.0f} MB; "
            f"{report['source_rows']:,} source rows, {report['lake_versions']:,} lake versions, "
            f"{report['partitions']} partitions, status {report['status']}",
            flush=True,
        )


def _prepare(admin_url: str, url: str, rows: int) -> int:
    """The table and its lake of daily windows, unless an earlier call left them."""
    import boto3
    import pg8000.native

    from totes_ingest import pipeline
    from totes_ingest.config import DEFAULT_ROW_GROUP_ROWS
    from totes_ingest.format_time import format_time
    from totes_ingest.lake import Lake
    from totes_ingest.local.dburl import settings_from_url

    s3 = boto3.client("s3")
    if BUCKET in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        _empty(s3)  # the previous size's lake
    else:
        s3.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"}
        )
    _create_database(admin_url, url.rsplit("/", 1)[1])
    conn = pg8000.native.Connection(**{k: v for k, v in settings_from_url(url).items() if v != ""})
    start = (datetime.now(UTC) - timedelta(days=DAYS)).replace(tzinfo=None, microsecond=0)
    start = start.replace(hour=0, minute=0, second=0)
    conn.run("SET TimeZone = 'UTC'")
    conn.run(_sales_order_ddl())
    conn.run(FILL, start=start, rows=rows)
    conn.run(f"VACUUM (FREEZE, ANALYZE) {TABLE}")
    settings = pipeline.RunSettings(
        fallback_lag_seconds=0, max_concurrency=1, safety_margin_seconds=0, source_timezone="UTC"
    )
    lake = Lake(s3, BUCKET)
    for day in range(1, DAYS + 2):
        run = pipeline.start_run({"tables_to_query": [TABLE]}, conn, settings)
        end = start + timedelta(days=day)
        item = {
            "table": TABLE,
            **{k: run[k] for k in ("run_id", "source_timezone", "hold")},
            "end_time": format_time(min(end, datetime.fromisoformat(run["end_time"]))),
        }
        item = pipeline.find_watermark(item, lake)
        item = pipeline.stage_table(
            item, conn, lake, row_group_rows=DEFAULT_ROW_GROUP_ROWS, reread_lag_seconds=0
        )
        if item["rows"]:
            pipeline.commit_table(item, lake)
    conn.close()
    return sum(1 for _ in lake.committed(TABLE))


def _empty(s3: Any) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=item["Key"])


def _measure(url: str, *, full: bool) -> tuple[float, float, dict[str, Any]]:
    command = [sys.executable, __file__, "--worker", "--database-url", url]
    started = time.perf_counter()
    process = subprocess.Popen([*command, *(["--full"] if full else [])], stdout=subprocess.PIPE)
    assert process.stdout is not None
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the audit failed: {out.decode()[-2000:]}")
    report: dict[str, Any] = json.loads(out)
    if report["status"] != "whole" or report.get("repaired") or report.get("tombstoned"):
        raise SystemExit(f"the audit wrote to the lake or found it not whole: {report}")
    return seconds, usage.ru_maxrss / 1024, report  # ru_maxrss: kilobytes on Linux


def _audit(url: str, full: bool) -> None:
    """One audit of the table, in this process; its report as JSON on stdout."""
    import boto3
    import pg8000.native

    from totes_ingest import config
    from totes_ingest.audit import AuditSettings, audit_table
    from totes_ingest.lake import Lake
    from totes_ingest.local.dburl import settings_from_url

    conn = pg8000.native.Connection(**{k: v for k, v in settings_from_url(url).items() if v != ""})
    settings = AuditSettings(
        horizon_days=None if full else 7.0,
        source_timezone="UTC",
        partition_keys=config.audit_partition_keys(),
    )
    report = audit_table(conn, Lake(boto3.client("s3"), BUCKET), TABLE, settings, audit_id="bench")
    print(json.dumps(report.to_payload(), default=str))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit("moto_server did not start")


if __name__ == "__main__":
    main()
