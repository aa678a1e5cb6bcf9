"""Benchmark: one ToteSys ``sales_order`` table to one zstd Parquet file, against peers.

Creates a throwaway database holding ``sales_order`` (the ToteSys DDL without foreign
keys) with N rows generated server-side, then times each approach as a whole child
process (wall time, and peak RSS from ``wait4``), at N and at 4N rows, round robin:

- ours: ``totes_ingest.extract.extract_to_parquet`` (pg8000 binary COPY -> Arrow -> Parquet)
- ours-N (``--approaches ours,ours-2,ours-4,...``): the same on N connections sharing one
  snapshot, each copying a ctid range of the table (``EXTRACT_CONNECTIONS``)
- duckdb: DuckDB with its postgres extension, ``COPY (SELECT ... WHERE last_updated ...)
  TO 'x.parquet' (FORMAT parquet, COMPRESSION zstd)``
- connectorx: ``connectorx.read_sql(..., return_type="arrow")`` -> ``pq.write_table``
- adbc: ADBC PostgreSQL driver, ``fetch_arrow_table`` -> ``pq.write_table``
- seed: pg8000 ``run("SELECT *")`` -> list of dicts -> pandas -> Parquet
- psql: ``psql -c "COPY ... TO STDOUT (FORMAT binary)" > /dev/null``, the floor

Each round runs every approach once, so ``ours / duckdb`` is also reported as the median
of the per-round ratios (paired), which holds when the machine's speed drifts.
``--wide-rows`` instead measures ours' peak RSS on rows of ``--row-bytes`` bytes.

Usage: ``python benchmarks/extract_bench.py [--rows 1000000] [--database-url URL]``
(default: the local server over TCP, 127.0.0.1:5432). See benchmarks/RESULTS.md.
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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_DB = "totes_bench"
WIDE_DB = "totes_bench_wide"
TABLE = "sales_order"
END_TIME = "2100-01-01 00:00:00"
APPROACHES = ("ours", "duckdb", "connectorx", "adbc", "seed", "psql")
WORKERS = ("ours", "duckdb", "connectorx", "adbc", "seed")
WIDE_TABLE = "wide_row"

# Realistic ToteSys values (see docs/totesys-schema.md), deterministic per row id:
# foreign keys, amounts and prices drawn by a hash of the id (no pattern an encoding
# could exploit that real orders would not have), ids and timestamps rising with jitter.
# design, staff, counterparty, units, unit price, currency: drawn by a hash of the id g.
ORDER_VALUES = """\
       1 + abs(hashint8(g)) % 500,
       1 + abs(hashint8(g + 1)) % 20,
       1 + abs(hashint8(g + 2)) % 20,
       1000 + abs(hashint8(g + 3)) % 99001,
       round(2 + (abs(hashint8(g + 4)) % 201) / 100.0, 2),
       1 + abs(hashint8(g + 5)) % 3,
"""
FILL = f"""
INSERT INTO {TABLE}
SELECT g,
{ORDER_VALUES}       to_char(date '2022-11-03' + (g / 1100)::int, 'YYYY-MM-DD'),
       to_char(date '2022-11-03' + (g / 1100 + 1 + abs(hashint8(g + 6)) % 30)::int,
               'YYYY-MM-DD'),
       1 + abs(hashint8(g + 7)) % 30,
       timestamp '2022-11-03 14:20:51.563' + g * interval '61 milliseconds'
         + (abs(hashint8(g + 8)) % 1000) * interval '1 millisecond',
       timestamp '2022-11-03 14:20:51.563' + g * interval '61 milliseconds'
         + (abs(hashint8(g + 9)) % 7) * interval '1 day 17 milliseconds'
FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS g
"""
# Wide rows (``--wide-rows``): an id, ``:bytes`` bytes of text, a timestamp.
WIDE_DDL = f"CREATE TABLE {WIDE_TABLE} (id int, payload text, last_updated timestamp)"
WIDE_FILL = f"""
INSERT INTO {WIDE_TABLE}
SELECT g, left(repeat(md5(g::text), CAST(:bytes AS int) / 32 + 1), CAST(:bytes AS int)),
       timestamp '2024-01-01' + g * interval '1 second'
FROM generate_series(1, CAST(:rows AS int)) AS g
"""


@dataclass(frozen=True)
class Measurement:
    approach: str
    rows: int
    seconds: float
    peak_rss_mb: float | None
    parquet_mb: float | None
    best_seconds: float | None = None
    paired: float | None = None  # median over rounds of ours / this, same round
    vs_duckdb: float | None = None  # ours and ours-N: median over rounds of this / duckdb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="N (default 1,000,000)")
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--scales", default="1,4", help="multiples of N to measure")
    parser.add_argument("--repeats", type=int, default=5, help="runs per approach (median)")
    parser.add_argument("--seed-repeats", type=int, default=1, help="runs of the slow seed")
    parser.add_argument("--approaches", default=",".join(APPROACHES))
    parser.add_argument("--wide-rows", type=int, help="instead: ours' peak RSS on N wide rows")
    parser.add_argument("--row-bytes", type=int, default=16384, help="bytes a wide row")
    parser.add_argument("--worker", type=_worker, help=argparse.SUPPRESS)
    parser.add_argument("--table", default=TABLE, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--compression", default=None, help="ours: zstd or snappy")
    args = parser.parse_args()
    if args.worker:
        _work(args.worker, args.database_url, args.table, args.out, args.compression)
    elif args.wide_rows:
        _bench_wide(args)
    else:
        _bench(args)


def _worker(name: str) -> str:
    if name not in WORKERS and _connections(name) is None:
        raise argparse.ArgumentTypeError(f"unknown approach {name!r}")
    return name


def _connections(approach: str) -> int | None:
    """N of ``ours-N``; 1 for ``ours``; None for a peer."""
    if approach == "ours":
        return 1
    name, _, count = approach.partition("-")
    return int(count) if name == "ours" and count.isdigit() and int(count) >= 1 else None


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
                    runs[approach].append(_measure(approach, url, TABLE, args.compression))
                    print(_line(runs[approach][-1], rows), file=sys.stderr)
        for approach, measured in runs.items():
            summary = _summary(approach, rows, measured, runs.get("ours"))
            if "duckdb" in runs and _connections(approach):
                summary = replace(summary, vs_duckdb=_paired(measured, runs["duckdb"]))
            measurements.append(summary)
    print(_markdown(measurements, args))


def _bench_wide(args: argparse.Namespace) -> None:
    """Ours' peak RSS on wide rows: memory must follow the row group's bytes, not rows."""
    import pg8000.native

    from totes_ingest.local.dburl import settings_from_url

    url = _with_database(args.database_url, WIDE_DB)
    _create_database(args.database_url, WIDE_DB)
    settings = {k: v for k, v in settings_from_url(url).items() if v != ""}
    conn = pg8000.native.Connection(**settings)
    conn.run(WIDE_DDL)
    conn.run(WIDE_FILL, rows=args.wide_rows, bytes=args.row_bytes)
    conn.close()
    runs = [_measure("ours", url, WIDE_TABLE, args.compression) for _ in range(args.repeats)]
    m = _summary("ours", args.wide_rows, runs, None)
    print(
        f"{args.wide_rows:,} rows of {args.row_bytes:,} bytes"
        f" ({args.wide_rows * args.row_bytes / 1e6:,.0f} MB of text): ours {m.seconds:.2f} s"
        f" (median of {len(runs)}), peak RSS {m.peak_rss_mb:.0f} MB, Parquet"
        f" {m.parquet_mb:.1f} MB"
    )


def _summary(
    approach: str, rows: int, measured: list[Measurement], ours: list[Measurement] | None
) -> Measurement:
    seconds = statistics.median_low([m.seconds for m in measured])
    median = next(m for m in measured if m.seconds == seconds)
    peak = max((m.peak_rss_mb or 0.0 for m in measured), default=0.0) or None
    paired = _paired(ours, measured) if ours else None
    best = min(m.seconds for m in measured)
    return Measurement(approach, rows, seconds, peak, median.parquet_mb, best, paired)


def _paired(a: list[Measurement], b: list[Measurement]) -> float:
    """The median of the round-by-round ratios a / b."""
    return statistics.median(x.seconds / y.seconds for x, y in zip(a, b, strict=False))


def _measure(approach: str, url: str, table: str, compression: str | None) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="totes-bench-") as workdir:
        out = Path(workdir) / "out.parquet"
        if approach == "psql":
            command = [
                "/usr/bin/psql",
                _libpq_url(url),
                "-X",
                "-q",
                "-c",
                f"COPY {table} TO STDOUT (FORMAT binary)",
            ]
        else:
            command = [sys.executable, __file__, "--worker", approach, "--database-url", url]
            command += ["--table", table, "--out", str(out)]
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
    return Measurement(approach, 0, seconds, peak, size)


def _work(approach: str, url: str, table: str, out: Path, compression: str | None) -> None:
    """One approach, in this (child) process: the parent measures it from outside."""
    window = f"SELECT * FROM {table} WHERE last_updated < TIMESTAMP '{END_TIME}'"
    connections = _connections(approach)
    if connections is not None:
        import pg8000.native

        from totes_ingest import extract, parquet_sink
        from totes_ingest.local.dburl import settings_from_url

        if compression:
            parquet_sink.COMPRESSION = compression  # type: ignore[assignment]
        # Without TLS, as a local run connects (DB_SSL_MODE=disable): pg8000's own default
        # builds a TLS context (loading the system's CAs) for every connection before it
        # asks the server. Not through db_connections, which imports boto3 for secrets.
        settings = {k: v for k, v in settings_from_url(url).items() if v != ""}
        settings["ssl_context"] = False
        conn = pg8000.native.Connection(**settings)
        extract.extract_to_parquet(
            conn,
            table,
            None,
            END_TIME,
            out,
            connections=connections,
            connect=lambda: pg8000.native.Connection(**settings),
        )
        conn.close()
    elif approach == "duckdb":
        import duckdb
        import duckdb_extension_postgres_scanner

        package = Path(duckdb_extension_postgres_scanner.__file__).parent
        (extension,) = package.glob("extensions/*/postgres_scanner.duckdb_extension")
        db = duckdb.connect()
        db.execute(f"LOAD '{extension}'")
        db.execute(f"ATTACH '{_libpq_dsn(url)}' AS pg (TYPE postgres, READ_ONLY)")
        db.execute(
            f"COPY ({window.replace(table, f'pg.public.{table}', 1)}) TO '{out}'"
            " (FORMAT parquet, COMPRESSION zstd)"
        )
    elif approach == "connectorx":
        import connectorx
        import pyarrow.parquet as pq

        pq.write_table(
            connectorx.read_sql(_libpq_url(url), window, return_type="arrow"),
            out,
            compression="zstd",
        )
    elif approach == "adbc":
        import adbc_driver_postgresql.dbapi
        import pyarrow.parquet as pq

        with adbc_driver_postgresql.dbapi.connect(_libpq_url(url)) as conn:
            cursor = conn.cursor()
            cursor.execute(window)
            pq.write_table(cursor.fetch_arrow_table(), out, compression="zstd")
            cursor.close()
    else:
        import pandas as pd
        import pg8000.native

        from totes_ingest.local.dburl import settings_from_url

        settings = {k: v for k, v in settings_from_url(url).items() if v != ""}
        conn = pg8000.native.Connection(**settings)
        rows = conn.run(window)
        names = [c["name"] for c in conn.columns]
        conn.close()
        records = [dict(zip(names, row, strict=True)) for row in rows]
        pd.DataFrame(records).to_parquet(out)


def _create_database(admin_url: str, name: str = BENCH_DB) -> None:
    import pg8000.native

    from totes_ingest.local.dburl import settings_from_url

    admin = pg8000.native.Connection(
        **{k: v for k, v in settings_from_url(admin_url).items() if v != ""}
    )
    admin.run(f"DROP DATABASE IF EXISTS {name}")
    admin.run(f"CREATE DATABASE {name}")
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


def _libpq_dsn(url: str) -> str:
    """``host=... port=... user=... dbname=...`` (what DuckDB's ATTACH takes) of ``url``."""
    parts = urlsplit(url)
    fields = {
        "host": parts.hostname or "",
        "port": str(parts.port or 5432),
        "user": parts.username or "",
        "password": parts.password or "",
        "dbname": parts.path.lstrip("/"),
    }
    return " ".join(f"{k}={v}" for k, v in fields.items() if v)


def _line(m: Measurement, rows: int) -> str:
    rss = f"{m.peak_rss_mb:.0f} MB" if m.peak_rss_mb else "-"
    return f"{m.approach:10} {rows:>10,} rows  {m.seconds:7.2f} s  peak RSS {rss}"


def _markdown(measurements: list[Measurement], args: argparse.Namespace) -> str:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}"
        f" ({os.cpu_count()} CPUs, Python {platform.python_version()}),"
        f" median of {args.repeats} runs (seed: {args.seed_repeats});"
        f" load average at the end {os.getloadavg()[0]:.2f}.",
        "",
        "| rows | approach | wall time (median) | best | peak RSS | Parquet"
        " | ours / this (median of pairs) | this / duckdb (median of pairs) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in measurements:
        best = m.best_seconds or m.seconds
        rss = f"{m.peak_rss_mb:.0f} MB" if m.peak_rss_mb else "-"
        size = f"{m.parquet_mb:.1f} MB" if m.parquet_mb else "-"
        paired = f"{m.paired:.2f}" if m.paired is not None else "-"
        vs_duckdb = f"{m.vs_duckdb:.2f}" if m.vs_duckdb is not None else "-"
        lines.append(
            f"| {m.rows:,} | {m.approach} | {m.seconds:.2f} s | {best:.2f} s | {rss}"
            f" | {size} | {paired} | {vs_duckdb} |"
        )
    lines.append("")
    for rows in sorted({m.rows for m in measurements}):
        lines.append(_targets(rows, {m.approach: m for m in measurements if m.rows == rows}))
    return "\n".join(lines)


def _targets(rows: int, at: dict[str, Measurement]) -> str:
    """Issue 11's extract targets at ``rows``: paired medians against DuckDB."""
    ours = at.get("ours")
    if ours is None:
        return f"- {rows:,} rows: ours not measured"
    parts = [f"- {rows:,} rows:"]
    duck = at.get("duckdb")
    if duck is not None and duck.paired is not None:
        parts.append(f"ours/DuckDB {duck.paired:.2f} (paired median) [target <= 1.0];")
        if ours.parquet_mb and duck.parquet_mb:
            parts.append(
                f"Parquet {ours.parquet_mb:.1f} MB vs DuckDB's {duck.parquet_mb:.1f} MB"
                " [target: no larger];"
            )
    if "psql" in at and at["psql"].paired is not None:
        parts.append(f"ours/psql floor {at['psql'].paired:.2f};")
    parts.append(f"ours peak RSS {ours.peak_rss_mb or 0:.0f} MB [target <= 200 MB]")
    return " ".join(parts)


if __name__ == "__main__":
    main()
