"""Benchmark: one ToteSys ``sales_order`` table to one Parquet file, four ways.

Creates a throwaway database holding ``sales_order`` (the ToteSys DDL without foreign
keys) with N rows generated server-side, then times each approach as a whole child
process (wall time, and peak RSS from ``wait4``), at N and at 4N rows:

- ours: ``totes_ingest.extract.extract_to_parquet`` (pg8000 COPY CSV -> Arrow -> Parquet)
- adbc: ADBC PostgreSQL driver, ``fetch_arrow_table`` -> ``pq.write_table``
- seed: pg8000 ``run("SELECT *")`` -> list of dicts -> pandas -> Parquet
- psql: ``psql -c "COPY ... TO STDOUT (FORMAT csv)" > /dev/null``, the floor

Usage: ``python benchmarks/extract_bench.py [--rows 1000000] [--database-url URL]``
(default: the local server over its unix socket). See benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
DEFAULT_URL = "postgresql://postgres@/postgres?host=/var/run/postgresql"
BENCH_DB = "totes_bench"
TABLE = "sales_order"
END_TIME = "2100-01-01 00:00:00"
APPROACHES = ("ours", "adbc", "seed", "psql")

# Realistic ToteSys values (see docs/totesys-schema.md), deterministic per row id.
FILL = f"""
INSERT INTO {TABLE}
SELECT g,
       1 + (g * 7919) % 500,
       1 + (g * 31) % 20,
       1 + (g * 17) % 20,
       1000 + (g * 7717) % 99001,
       round(2 + ((g * 13) % 201) / 100.0, 2),
       1 + g % 3,
       to_char(date '2022-11-03' + (g % 900)::int, 'YYYY-MM-DD'),
       to_char(date '2022-11-03' + (g % 900 + 1 + g % 30)::int, 'YYYY-MM-DD'),
       1 + (g * 11) % 30,
       timestamp '2022-11-03 14:20:51.563' + g * interval '61 milliseconds',
       timestamp '2022-11-03 14:20:51.563' + g * interval '61 milliseconds'
         + (g % 7) * interval '1 day 17 milliseconds'
FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS g
"""


@dataclass(frozen=True)
class Measurement:
    approach: str
    rows: int
    seconds: float
    peak_rss_mb: float | None
    parquet_mb: float | None
    best_seconds: float | None = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="N (default 1,000,000)")
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--scales", default="1,4", help="multiples of N to measure")
    parser.add_argument("--repeats", type=int, default=3, help="runs per approach (median)")
    parser.add_argument("--seed-repeats", type=int, default=1, help="runs of the slow seed")
    parser.add_argument("--approaches", default=",".join(APPROACHES))
    parser.add_argument("--worker", choices=APPROACHES[:3], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--compression", default=None, help="ours: zstd or snappy")
    args = parser.parse_args()
    if args.worker:
        _work(args.worker, args.database_url, args.out, args.compression)
        return
    _bench(args)


def _bench(args: argparse.Namespace) -> None:
    url = _with_database(args.database_url, BENCH_DB)
    approaches = [a for a in args.approaches.split(",") if a]
    measurements: list[Measurement] = []
    _create_database(args.database_url)
    loaded = 0
    for scale in (int(s) for s in args.scales.split(",")):
        rows = args.rows * scale
        print(f"loading {rows:,} rows...", file=sys.stderr)
        _fill(url, loaded, rows)
        loaded = rows
        # Round robin, so every approach sees the same background load.
        runs: dict[str, list[Measurement]] = {a: [] for a in approaches}
        for round_ in range(max(args.repeats, args.seed_repeats)):
            for approach in approaches:
                repeats = args.seed_repeats if approach == "seed" else args.repeats
                if round_ < repeats:
                    runs[approach].append(_measure(approach, url, rows, args.compression))
                    print(_line(runs[approach][-1]), file=sys.stderr)
        for approach, measured in runs.items():
            seconds = statistics.median_low([m.seconds for m in measured])
            median = next(m for m in measured if m.seconds == seconds)
            peak = max((m.peak_rss_mb or 0.0 for m in measured), default=0.0) or None
            best = min(m.seconds for m in measured)
            measurements.append(Measurement(approach, rows, seconds, peak, median.parquet_mb, best))
    print(_markdown(measurements, args))


def _measure(approach: str, url: str, rows: int, compression: str | None) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="totes-bench-") as workdir:
        out = Path(workdir) / "out.parquet"
        if approach == "psql":
            command = [
                "/usr/bin/psql",
                _libpq_url(url),
                "-X",
                "-q",
                "-c",
                f"COPY {TABLE} TO STDOUT (FORMAT csv)",
            ]
        else:
            command = [
                sys.executable,
                __file__,
                "--worker",
                approach,
                "--database-url",
                url,
                "--out",
                str(out),
            ]
            if compression:
                command += ["--compression", compression]
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise SystemExit(f"{approach} failed with exit code {process.returncode}")
        size = out.stat().st_size / 1e6 if out.exists() else None
    # ru_maxrss is in kilobytes on Linux; psql's own RSS is not what we compare.
    peak = usage.ru_maxrss / 1024 if approach != "psql" else None
    return Measurement(approach, rows, seconds, peak, size)


def _work(approach: str, url: str, out: Path, compression: str | None) -> None:
    """One approach, in this (child) process: the parent measures it from outside."""
    if approach == "ours":
        import pg8000.native

        from totes_ingest import extract, parquet_sink
        from totes_ingest.local.dburl import settings_from_url

        if compression:
            parquet_sink.COMPRESSION = compression  # type: ignore[assignment]
        settings = {k: v for k, v in settings_from_url(url).items() if v != ""}
        conn = pg8000.native.Connection(**settings)
        extract.extract_to_parquet(conn, TABLE, None, END_TIME, out)
        conn.close()
    elif approach == "adbc":
        import adbc_driver_postgresql.dbapi
        import pyarrow.parquet as pq

        with adbc_driver_postgresql.dbapi.connect(_libpq_url(url)) as conn:
            cursor = conn.cursor()
            cursor.execute(f"SELECT * FROM {TABLE}")
            pq.write_table(cursor.fetch_arrow_table(), out)
            cursor.close()
    else:
        import pandas as pd
        import pg8000.native

        from totes_ingest.local.dburl import settings_from_url

        settings = {k: v for k, v in settings_from_url(url).items() if v != ""}
        conn = pg8000.native.Connection(**settings)
        rows = conn.run(f"SELECT * FROM {TABLE}")
        names = [c["name"] for c in conn.columns]
        conn.close()
        records = [dict(zip(names, row, strict=True)) for row in rows]
        pd.DataFrame(records).to_parquet(out)


def _create_database(admin_url: str) -> None:
    import pg8000.native

    from totes_ingest.local.dburl import settings_from_url

    admin = pg8000.native.Connection(
        **{k: v for k, v in settings_from_url(admin_url).items() if v != ""}
    )
    admin.run(f"DROP DATABASE IF EXISTS {BENCH_DB}")
    admin.run(f"CREATE DATABASE {BENCH_DB}")
    admin.close()


def _fill(url: str, first_loaded: int, rows: int) -> None:
    import pg8000.native

    from totes_ingest.local.dburl import settings_from_url

    conn = pg8000.native.Connection(**{k: v for k, v in settings_from_url(url).items() if v != ""})
    if first_loaded == 0:
        conn.run(_sales_order_ddl())
    conn.run(FILL, first=first_loaded + 1, last=rows)
    conn.run(f"VACUUM (FREEZE, ANALYZE) {TABLE}")
    conn.close()


def _sales_order_ddl() -> str:
    """The ToteSys DDL of sales_order, without its foreign keys."""
    schema = (REPO / "functions/totes_ingest/local/totesys_schema.sql").read_text()
    match = re.search(rf"CREATE TABLE {TABLE} \(.*?\n\);", schema, re.DOTALL)
    if match is None:
        raise SystemExit(f"no CREATE TABLE {TABLE} in totesys_schema.sql")
    return re.sub(r"\s+REFERENCES \w+", "", match.group(0))


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _libpq_url(url: str) -> str:
    return url  # libpq reads the same postgresql:// URLs, ?host=/socket/dir included


def _line(m: Measurement) -> str:
    rss = f"{m.peak_rss_mb:.0f} MB" if m.peak_rss_mb else "-"
    return f"{m.approach:5} {m.rows:>10,} rows  {m.seconds:7.2f} s  peak RSS {rss}"


def _markdown(measurements: list[Measurement], args: argparse.Namespace) -> str:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}"
        f" ({os.cpu_count()} CPUs, Python {platform.python_version()}),"
        f" median of {args.repeats} runs (seed: {args.seed_repeats});"
        f" load average at the end {os.getloadavg()[0]:.2f}.",
        "",
        "| rows | approach | wall time (median) | best | peak RSS | Parquet"
        " | ours / this (median) | ours / this (best) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rows in sorted({m.rows for m in measurements}):
        at = {m.approach: m for m in measurements if m.rows == rows}
        ours = at.get("ours")
        for m in at.values():
            best = m.best_seconds or m.seconds
            ratio = f"{ours.seconds / m.seconds:.2f}" if ours else "-"
            best_ratio = f"{(ours.best_seconds or ours.seconds) / best:.2f}" if ours else "-"
            rss = f"{m.peak_rss_mb:.0f} MB" if m.peak_rss_mb else "-"
            size = f"{m.parquet_mb:.1f} MB" if m.parquet_mb else "-"
            lines.append(
                f"| {rows:,} | {m.approach} | {m.seconds:.2f} s | {best:.2f} s | {rss} | {size}"
                f" | {ratio} | {best_ratio} |"
            )
    lines.append("")
    for rows in sorted({m.rows for m in measurements}):
        lines.append(_targets(rows, {m.approach: m for m in measurements if m.rows == rows}))
    return "\n".join(lines)


def _targets(rows: int, at: dict[str, Measurement]) -> str:
    """The four targets at ``rows``, from medians (best runs in brackets)."""
    ours = at.get("ours")
    if ours is None:
        return f"- {rows:,} rows: ours not measured"

    def best(m: Measurement) -> float:
        return m.best_seconds or m.seconds

    parts = [f"- {rows:,} rows:"]
    if "adbc" in at:
        parts.append(
            f"ours/ADBC {ours.seconds / at['adbc'].seconds:.2f}"
            f" ({best(ours) / best(at['adbc']):.2f}) [target <= 1.0];"
        )
    if "psql" in at:
        parts.append(
            f"ours/psql {ours.seconds / at['psql'].seconds:.2f}"
            f" ({best(ours) / best(at['psql']):.2f}) [target <= 2.0];"
        )
    if "seed" in at:
        parts.append(
            f"seed/ours {at['seed'].seconds / ours.seconds:.1f}x"
            f" ({best(at['seed']) / best(ours):.1f}x) [target >= 15x];"
        )
    parts.append(f"ours peak RSS {ours.peak_rss_mb or 0:.0f} MB [target < 256 MB]")
    return " ".join(parts)


if __name__ == "__main__":
    main()
