"""Benchmark: an initial load of N ``sales_order`` rows through the state machine, one
window against windows of at most ``MAX_WINDOW_ROWS`` rows (issue 12's scale-out).

A throwaway database ``totes_bench_scale`` holds the ToteSys ``sales_order`` table (DDL
without foreign keys, its ``last_updated`` index) filled server-side with the extract
benchmark's realistic values. Each configuration is one whole ``totes-ingest run``
process (the real ASL in moto, the real handlers, a local lake directory), timed from
outside: wall time and peak RSS from ``wait4``. Its ``-v`` output gives each step's
duration. Every run starts from an empty lake, and must land every row: the keys are
counted and the rows of the lake summed.

Locally all steps share one process and the machine's cores, so parallel staging cannot
be faster than one window here: the figures show what the plan and the commits cost, and
that memory stays flat; in AWS each sub-window is a Lambda of its own.

Usage: ``python benchmarks/scale_bench.py [--rows 20000000] [--window-rows 2000000]
[--stage-concurrency 4] [--database-url URL] [--reuse]``. See benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_bench import (
    DEFAULT_URL,
    _create_database,
    _fill,
    _with_database,
)

DATABASE = "totes_bench_scale"
TABLE = "sales_order"
# The -v lines of a step: "sales_order: GetLastIngestTime done (0.1s)", "sales_order: cut
# into 10 sub-windows, staged in parallel (2.0s)", "sales_order: sub-window 3 staged, ...".
_STEP = re.compile(
    r"^sales_order: (?:(?P<step>\w+) done|(?P<plan>cut into)|(?P<sub>sub-window \d+ staged)"
    r"|(?P<commit>[\d,]+ rows ->)).*\((?P<s>\d+(?:\.\d+)?)s\)$"
)


@dataclass
class Measured:
    label: str
    window_rows: int
    seconds: float
    peak_rss_mb: float
    keys: int
    rows: int
    steps: dict[str, list[float]] = field(default_factory=dict)

    def line(self) -> str:
        # each step's -v line gives the table's time so far: when its last one ended
        steps = ", ".join(
            f"{name} x{len(times)} by {max(times):.1f} s" for name, times in self.steps.items()
        )
        return (
            f"| {self.label} | {self.window_rows:,} | {self.seconds:.1f} s "
            f"| {self.peak_rss_mb:.0f} MB | {self.keys} | {self.rows:,} | {steps} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--window-rows", type=int, default=2_000_000)
    parser.add_argument("--stage-concurrency", type=int, default=4)
    parser.add_argument("--database-url", default=os.environ.get("TOTES_BENCH_URL", DEFAULT_URL))
    parser.add_argument("--reuse", action="store_true", help="keep an already filled database")
    args = parser.parse_args()
    url = _with_database(args.database_url, DATABASE)
    if not (args.reuse and _count(url) == args.rows):
        started = time.perf_counter()
        _create_database(args.database_url, DATABASE)
        _fill(url, 0, args.rows)
        _sql(url, f"CREATE INDEX ON {TABLE} (last_updated)")
        _sql(url, f"VACUUM (ANALYZE) {TABLE}")
        print(f"filled {args.rows:,} rows in {time.perf_counter() - started:.0f} s", flush=True)
    print("| run | MAX_WINDOW_ROWS | wall | peak RSS | keys | rows in the lake | steps, ended by |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for label, window_rows in (("one window", args.rows * 2), ("bounded", args.window_rows)):
        measured = _run(url, label, window_rows, args.stage_concurrency)
        if measured.rows != args.rows:
            raise SystemExit(f"{label}: the lake holds {measured.rows} rows, not {args.rows}")
        print(measured.line(), flush=True)
    # The local process holds moto's bucket (every staged and committed byte) in memory:
    # QueryToParquet's own peak is its extract's, measured alone in a process of its own.
    print("\n| QueryToParquet's extract alone | rows | wall | peak RSS | Parquet |")
    print("|---|---:|---:|---:|---:|")
    ((cut,),) = _sql(
        url,
        f"SELECT last_updated FROM {TABLE} ORDER BY last_updated OFFSET {args.window_rows} LIMIT 1",
    )
    for label, end in (("a bounded window", str(cut)), ("the one window", "2100-01-01 00:00:00")):
        rows, seconds, peak, size = _extract(url, end)
        print(
            f"| {label} | {rows:,} | {seconds:.1f} s | {peak:.0f} MB | {size:.0f} MB |", flush=True
        )


def _run(url: str, label: str, window_rows: int, stage_concurrency: int) -> Measured:
    lake = Path(tempfile.mkdtemp(prefix="totes-scale-"))
    try:
        env = {
            **os.environ,
            "MAX_WINDOW_ROWS": str(window_rows),
            "STAGE_CONCURRENCY": str(stage_concurrency),
            "END_TIME_SAFETY_MARGIN_SECONDS": "0",
        }
        command = [str(Path(sys.executable).with_name("totes-ingest")), "run", "-v"]
        command += ["--database-url", url, "--lake", str(lake), "--tables", TABLE]
        command += ["--timeout", "3600"]
        started = time.perf_counter()
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        assert process.stderr is not None
        steps: dict[str, list[float]] = defaultdict(list)
        for line in process.stderr:
            match = _STEP.match(line.strip())
            if match:
                name = match["step"] or (
                    "Plan" if match["plan"] else "StageWindow" if match["sub"] else "Commit"
                )
                steps[name].append(float(match["s"]))
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{label}: totes-ingest run failed")
        keys = sorted(lake.glob(f"{TABLE}/????/??/??/*.parquet"))
        return Measured(
            label, window_rows, seconds, usage.ru_maxrss / 1024, len(keys), _rows(keys), steps
        )
    finally:
        shutil.rmtree(lake, ignore_errors=True)


def _extract(url: str, end: str) -> tuple[int, float, float, float]:
    """extract_to_parquet of ``[beginning, end)`` in a child process: rows, s, MB, MB."""
    with tempfile.TemporaryDirectory(prefix="totes-scale-") as workdir:
        out = Path(workdir) / "window.parquet"
        command = [sys.executable, __file__, "--extract", url, end, str(out)]
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        rows = int(process.stdout.read().strip() or 0)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit("the extract failed")
        return rows, seconds, usage.ru_maxrss / 1024, out.stat().st_size / 1e6


def _extract_worker(url: str, end: str, out: str) -> None:
    import pg8000.native

    from totes_ingest.extract import extract_to_parquet
    from totes_ingest.local.dburl import settings_from_url

    conn = pg8000.native.Connection(**{k: v for k, v in settings_from_url(url).items() if v != ""})
    print(extract_to_parquet(conn, TABLE, None, end, Path(out)).rows)


def _rows(keys: list[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(key).metadata.num_rows for key in keys)


def _count(url: str) -> int:
    try:
        ((count,),) = _sql(url, f"SELECT count(*) FROM {TABLE}")
    except Exception:
        return -1
    return int(count)


def _sql(url: str, sql: str) -> list[list[object]]:
    import pg8000.native

    from totes_ingest.local.dburl import settings_from_url

    settings = {k: v for k, v in settings_from_url(url).items() if v != ""}
    conn = pg8000.native.Connection(**settings)
    try:
        return conn.run(sql) or []
    finally:
        conn.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--extract"]:
        _extract_worker(*sys.argv[2:5])
    else:
        main()
