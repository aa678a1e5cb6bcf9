"""Benchmark: what the re-read overlap costs a run, at 10, 10,000 and 1,000,000 changed rows.

For each N, a throwaway database holds a ``sales_order``-shaped table whose N rows were
all changed inside the last ``REREAD_LAG_SECONDS``; a first window ingests them into a
(moto) lake. Then the next window, which has nothing new, is staged with the overlap on
(it re-reads the N versions in the source, reads the key and cursor columns of the files
that cover them, and finds none missing) and off, ``--repeat`` times each, alternating.
Reported: the extra rows read, and the median time of QueryToParquet's work in-process
(the lake is moto in this process, so whole-process timing cannot share it).

Usage: ``python benchmarks/reread_bench.py [--database-url URL] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
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

import boto3  # noqa: E402
import pg8000.native  # noqa: E402
from moto import mock_aws  # noqa: E402

from totes_ingest import pipeline  # noqa: E402
from totes_ingest.lake import Lake  # noqa: E402
from totes_ingest.local.dburl import settings_from_url, with_database  # noqa: E402

BUCKET = "reread-bench"
TABLE = "sales_order"
LAG = 300.0
SIZES = (10, 10_000, 1_000_000)
DDL = f"""
CREATE TABLE {TABLE} (
    sales_order_id int PRIMARY KEY, units_sold int, unit_price numeric(10, 2),
    agreed_delivery_date varchar, created_at timestamp, last_updated timestamp
)"""
FILL = f"""
INSERT INTO {TABLE}
SELECT g, 1000 + g % 99001, 2 + (g % 201) / 100.0, '2026-12-01', now(),
       now() - (200 * (:n - g) / :n) * interval '1 second'
FROM generate_series(1, CAST(:n AS int)) AS g
"""
SETTINGS = pipeline.RunSettings(
    fallback_lag_seconds=300, max_concurrency=1, safety_margin_seconds=0
)


def _item(conn: Any, lake: Lake) -> dict[str, Any]:
    run = pipeline.start_run({"tables_to_query": [TABLE]}, conn, SETTINGS)
    item = {
        "table": TABLE,
        **{k: run[k] for k in ("end_time", "run_id", "source_timezone", "hold")},
    }
    return pipeline.find_watermark(item, lake)


def measure(conn: Any, n: int, repeat: int) -> dict[str, float]:
    conn.run(f"DROP TABLE IF EXISTS {TABLE}")
    conn.run(DDL)
    conn.run(FILL, n=n)
    conn.run(f"ANALYZE {TABLE}")
    s3 = boto3.client("s3", region_name="eu-west-2")
    bucket = f"{BUCKET}-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    lake = Lake(s3, bucket)
    first = pipeline.stage_table(_item(conn, lake), conn, lake, row_group_rows=131_072)
    pipeline.commit_table(first, lake)
    times: dict[float, list[float]] = {LAG: [], 0.0: []}
    extra = 0
    for _ in range(repeat):
        for lag in (LAG, 0.0):
            item = _item(conn, lake)
            started = time.perf_counter()
            staged = pipeline.stage_table(
                item, conn, lake, row_group_rows=131_072, reread_lag_seconds=lag
            )
            times[lag].append(time.perf_counter() - started)
            assert staged["rows"] == 0, staged
    reread = conn.run(
        f"SELECT count(*) FROM {TABLE} WHERE last_updated >= :since",
        since=datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=LAG + 60),
    )[0][0]
    extra = int(reread)
    return {
        "rows re-read": extra,
        "with overlap s": statistics.median(times[LAG]),
        "without s": statistics.median(times[0.0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url", default="postgresql://postgres@/postgres?host=/var/run/postgresql"
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    args = parser.parse_args()
    settings = settings_from_url(args.database_url)
    admin = pg8000.native.Connection(**{k: v for k, v in settings.items() if v != ""})
    name = f"totes_reread_{uuid.uuid4().hex[:8]}"
    admin.run(f'CREATE DATABASE "{name}"')
    try:
        conn = pg8000.native.Connection(
            **{k: v for k, v in with_database(settings, name).items() if v != ""}
        )
        print(
            "| changed rows in the overlap | rows re-read | stage, overlap on "
            "| stage, overlap off | cost |"
        )
        print("|---:|---:|---:|---:|---:|")
        with mock_aws():
            for n in (int(x) for x in args.sizes.split(",")):
                m = measure(conn, n, args.repeat)
                cost = m["with overlap s"] - m["without s"]
                print(
                    f"| {n:,} | {m['rows re-read']:,} | {m['with overlap s']:.3f} s "
                    f"| {m['without s']:.3f} s | +{cost:.3f} s |",
                    flush=True,
                )
        conn.close()
    finally:
        admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()
