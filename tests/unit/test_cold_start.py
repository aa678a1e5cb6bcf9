"""Cold starts: what each Lambda handler imports (its import graph, not its timing).

A step that writes no Parquet loads neither pyarrow nor numpy; a step that never connects
to the database (GetLastIngestTime, CommitTable) does not load pg8000; Aggregate, which
touches neither the database nor S3, loads neither driver; no handler loads the X-Ray SDK
before its first traced invocation (observability.LazyTracer), nor anything of the local
runner (moto, DuckDB, PyYAML). Each handler is imported in a fresh interpreter, as a cold
Lambda would.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

PARQUET = {"pyarrow", "numpy"}
DATABASE = {"pg8000"}
DRIVERS = DATABASE | {"boto3"}
TRACING = {"aws_xray_sdk"}
LOCAL = {"moto", "duckdb", "yaml"}  # the local runner's, never a Lambda's
HANDLERS = {
    "start_run": PARQUET | TRACING | LOCAL,
    "get_last_ingest_time": PARQUET | DATABASE | TRACING | LOCAL,
    # it writes Parquet, but loads pyarrow only when it runs
    "query_to_parquet": TRACING | LOCAL,
    "commit_table": PARQUET | DATABASE | TRACING | LOCAL,
    "aggregate": PARQUET | DRIVERS | TRACING | LOCAL,
    "audit_table": TRACING | LOCAL,  # the audit reads and writes Parquet
    "audit_summary": PARQUET | DRIVERS | TRACING | LOCAL,
}


def _imported(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    return {name.partition(".")[0] for name in json.loads(out.stdout)}


@pytest.mark.parametrize(("handler", "forbidden"), sorted(HANDLERS.items()))
def test_a_handler_imports_only_what_its_step_needs(handler: str, forbidden: set[str]) -> None:
    imported = _imported(f"totes_ingest.handlers.{handler}")
    assert imported & forbidden == set()


def test_the_extract_loads_pyarrow_only_when_it_runs() -> None:
    assert _imported("totes_ingest.extract") & PARQUET == set()


def test_the_extract_engine_needs_no_aws_library() -> None:
    engine = "totes_ingest.extract, totes_ingest.parquet_sink, totes_ingest.catalog"
    assert _imported(engine) & {"boto3", "botocore", "aws_lambda_powertools"} == set()
