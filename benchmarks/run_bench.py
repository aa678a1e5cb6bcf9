"""Benchmark: a whole local run of the eleven ToteSys tables against the sum of their extracts.

Issue 11's fourth target: ``totes-ingest run`` of the eleven tables at ``seed --scale 100``
(about 4.25 M rows) into an empty lake, end to end, in at most 1.3x the sum of the tables'
extract times. Each round measures, as whole child processes (wall time; peak RSS from
``wait4``):

- extracts: one child process that imports the extract engine (pg8000, numpy, pyarrow)
  and then calls ``totes_ingest.extract.extract_to_parquet`` for each table in turn, one
  table at a time, each to its own Parquet file; the sum is of the calls' own times
  (``perf_counter`` around each call, in-process), so no interpreter start-up or import is
  in it: the strict denominator. The child's whole wall time is reported beside it.
- run: ``totes-ingest run --database-url URL --lake EMPTY --json`` (a fresh, empty lake
  folder each round): moto's Step Functions interpreter executing the real ASL with the
  real handlers, the eleven tables side by side in its Map, the lake written back, the
  DuckDB views built; start-up and imports included.

Rounds alternate the order (extracts first, then run first), and the ratio is taken round
by round (paired), reported as the median. The database is ``--database-url`` (default:
``totes_run_bench`` on 127.0.0.1:5432, created and seeded at ``--scale`` when it does not
exist).

Usage: ``python benchmarks/run_bench.py [--repeats 3] [--database-url URL] [--scale 100]``
(``make bench-run``). See benchmarks/RESULTS.md, "A whole run".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/totes_run_bench"
TARGET_RATIO = 1.3
# Every row the seed made: its timestamps are in the past, so this is the run's window too.
END_TIME = "2100-01-01 00:00:00"


@dataclass(frozen=True)
class Child:
    """One child process: its wall time, CPU (user + system), peak RSS and what it printed
    (JSON)."""

    seconds: float
    cpu_seconds: float
    peak_mb: float
    output: Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--scale", type=float, default=100, help="seed scale of a new database")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (medians)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_extract_all(args.database_url, args.out)))
        return
    tables, rows = _prepare(args.database_url, args.scale)
    print(f"{len(tables)} tables, {rows:,} rows in {_redacted(args.database_url)}", flush=True)
    extracts: list[Child] = []
    runs: list[Child] = []
    for round_ in range(args.repeats):
        order = ("extracts", "run") if round_ % 2 == 0 else ("run", "extracts")
        for what in order:
            if what == "extracts":
                extracts.append(_measure_extracts(args.database_url))
                summed = sum(t["seconds"] for t in extracts[-1].output.values())
                print(f"round {round_ + 1}: extracts {summed:.2f} s (sum)", flush=True)
            else:
                runs.append(_measure_run(args.database_url, len(tables)))
                print(f"round {round_ + 1}: run {runs[-1].seconds:.2f} s", flush=True)
    print()
    print(_report(extracts, runs, rows, args))


def _measure_extracts(url: str) -> Child:
    with tempfile.TemporaryDirectory(prefix="totes-run-bench-") as workdir:
        command = [sys.executable, __file__, "--worker", "--database-url", url]
        return _child([*command, "--out", workdir])


def _measure_run(url: str, tables: int) -> Child:
    with tempfile.TemporaryDirectory(prefix="totes-run-bench-") as workdir:
        lake = Path(workdir) / "lake"
        command = [sys.executable, "-m", "totes_ingest.local", "run", "--json"]
        measured = _child([*command, "--database-url", url, "--lake", str(lake)])
    if not isinstance(measured.output, dict) or len(measured.output) != tables:
        raise SystemExit(f"the run wrote {measured.output!r}, not one file per table")
    return measured


def _child(command: list[str]) -> Child:
    """Run ``command`` to its end: wall time, CPU and peak RSS (``wait4``), stdout as JSON."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{command[:5]} failed with status {status}")
        out.seek(0)
        printed = json.loads(out.read() or b"null")
    cpu = usage.ru_utime + usage.ru_stime
    return Child(seconds, cpu, usage.ru_maxrss / 1024, printed)  # ru_maxrss: kB on Linux


def _extract_all(url: str, out: Path) -> dict[str, dict[str, float]]:
    """In this (child) process: every table's extract, one after another, each timed."""
    import pg8000.native
    import pyarrow.parquet  # noqa: F401  # imported before the clock starts, as in a warm step

    from totes_ingest import extract, parquet_sink  # noqa: F401
    from totes_ingest.local.dburl import settings_from_url
    from totes_ingest.local.totesys import TABLES

    conn = pg8000.native.Connection(**{k: v for k, v in settings_from_url(url).items() if v})
    timings: dict[str, dict[str, float]] = {}
    try:
        for table in TABLES:
            started = time.perf_counter()
            result = extract.extract_to_parquet(conn, table, None, END_TIME, out / f"{table}.pq")
            timings[table] = {"seconds": time.perf_counter() - started, "rows": result.rows}
    finally:
        conn.close()
    return timings


def _prepare(url: str, scale: float) -> tuple[list[str], int]:
    """The tables and their total rows; a missing database is created and seeded first."""
    import pg8000.native

    from totes_ingest.local.dburl import settings_from_url
    from totes_ingest.local.seed import seed, totesys_tables_present
    from totes_ingest.local.totesys import TABLES

    settings = {k: v for k, v in settings_from_url(url).items() if v}
    database = settings["database"]
    admin = pg8000.native.Connection(**{**settings, "database": "postgres"})
    try:
        if not admin.run("SELECT 1 FROM pg_database WHERE datname = :d", d=database):
            admin.run(f'CREATE DATABASE "{database}"')
            print(f"created {database}; seeding it at scale {scale:g}", flush=True)
    finally:
        admin.close()
    conn = pg8000.native.Connection(**settings)
    try:
        if totesys_tables_present(conn) != set(TABLES):
            seed(conn, scale)
        rows = sum(conn.run(f'SELECT count(*) FROM "{table}"')[0][0] for table in TABLES)
    finally:
        conn.close()
    return list(TABLES), rows


def _report(extracts: list[Child], runs: list[Child], rows: int, args: argparse.Namespace) -> str:
    sums = [sum(t["seconds"] for t in e.output.values()) for e in extracts]
    ratios = [r.seconds / s for r, s in zip(runs, sums, strict=True)]
    per_table = {
        table: statistics.median(e.output[table]["seconds"] for e in extracts)
        for table in extracts[0].output
    }
    ratio = statistics.median(ratios)
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}"
        f" ({os.cpu_count()} CPUs, Python {platform.python_version()}), {len(runs)} rounds,"
        f" medians; load average at the end {os.getloadavg()[0]:.2f}; {rows:,} rows.",
        "",
        "| | median wall | min-max | CPU (median) | peak RSS (median) |",
        "|---|---:|---:|---:|---:|",
        _row("sum of the 11 extracts (in-process)", sums, None),
        _row("extracts' process (imports included)", [e.seconds for e in extracts], extracts),
        _row("`totes-ingest run`, empty lake", [r.seconds for r in runs], runs),
        "",
        f"run / sum of extracts: **{ratio:.2f}** (median of the rounds' ratios"
        f" {', '.join(f'{r:.2f}' for r in ratios)}); target <= {TARGET_RATIO}: {verdict}",
        "",
        "Per table, median extract: "
        + ", ".join(f"{t} {s:.2f} s" for t, s in sorted(per_table.items(), key=lambda x: -x[1])),
    ]
    return "\n".join(lines)


def _row(label: str, seconds: list[float], children: list[Child] | None) -> str:
    peak = f"{statistics.median(c.peak_mb for c in children):.0f} MB" if children else "-"
    cpu = f"{statistics.median(c.cpu_seconds for c in children):.2f} s" if children else "-"
    return (
        f"| {label} | {statistics.median(seconds):.2f} s"
        f" | {min(seconds):.2f}-{max(seconds):.2f} s | {cpu} | {peak} |"
    )


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}@{host}:{parts.port or 5432}" if parts.username else host
    return urlunsplit(parts._replace(netloc=netloc))


if __name__ == "__main__":
    main()
