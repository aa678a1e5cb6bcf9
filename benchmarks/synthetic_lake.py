"""Make a local lake of about N files, for timing the local run's lake sync at size.

It starts from a real lake (one ``totes-ingest run``: one committed window per table) and
gives every table a history of older windows before that one: each older window is a
final key holding the same Parquet file as the table's real one, with its claim, chained
by start and end as the commit protocol writes them, an hour apart. The newest window of
each table is the real one, re-claimed as the successor of the synthetic history, so the
next ``totes-ingest run`` on the copy finds the same watermark and the same rows as on
the original.

Usage: ``python benchmarks/synthetic_lake.py SOURCE_LAKE TARGET_LAKE [--files 10000]``.
"""

from __future__ import annotations

import argparse
import shutil
from datetime import timedelta
from pathlib import Path

from totes_ingest.generate_file_key import claim_key, generate_file_key, staging_key
from totes_ingest.lake import Claim
from totes_ingest.local.duckdb_lake import lake_tables
from totes_ingest.local.lake_dir import MARKER

RUN_ID = "run-synthetic"


def build(source: Path, target: Path, files: int) -> int:
    """Write the lake ``target``; the number of object files in it."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    (target / MARKER).write_text((source / MARKER).read_text())
    tables = lake_tables(source)
    per_table = max(1, files // (2 * len(tables)))
    written = 0
    for table in tables:
        newest = max((source / table).glob("*/*/*/*.parquet"))
        real = Claim.parse(
            (source / claim_key(table, None)).read_bytes(), key=claim_key(table, None), table=table
        )
        body = newest.read_bytes()
        start = None
        ends = [real.end - timedelta(hours=per_table - i) for i in range(per_table)]
        for end in [*ends, real.end]:
            final = generate_file_key(table, end)
            claim = Claim(
                run_id=RUN_ID,
                start=start,
                end=end,
                final_key=final,
                staging_key=staging_key(table, start, end, RUN_ID),
                rows=real.rows,
                cursor=real.cursor if end == real.end else None,
            )
            for key, content in ((final, body), (claim_key(table, start), claim.to_json())):
                path = target / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
                written += 1
            start = end
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    print(f"{build(args.source, args.target, args.files):,} files in {args.target}")


if __name__ == "__main__":
    main()
