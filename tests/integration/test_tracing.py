"""Database time shows in the trace: every statement, query or COPY, is a subsegment."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from aws_xray_sdk import global_sdk_config
from aws_xray_sdk.core import xray_recorder

from totes_ingest.db_connections import close_db_connection, open_connection
from totes_ingest.observability import tracer

pytestmark = pytest.mark.integration


@pytest.fixture
def segment() -> Iterator[Any]:
    """An open X-Ray segment (as Lambda's is), discarded afterwards: nothing is sent."""
    tracer.real()  # built first, as in a process that has traced before (it sets the SDK up)
    enabled = global_sdk_config.sdk_enabled()
    global_sdk_config.set_sdk_enabled(True)
    xray_recorder.configure(sampling=False, context_missing="LOG_ERROR")
    yield xray_recorder.begin_segment("test")
    xray_recorder.clear_trace_entities()
    global_sdk_config.set_sdk_enabled(enabled)


def test_each_statement_and_copy_is_a_subsegment_with_its_verb_and_row_count(
    db_settings: dict[str, Any], segment: Any
) -> None:
    conn = open_connection(db_settings)
    try:
        conn.run("SELECT generate_series(1, 3)")
        conn.run("COPY (SELECT generate_series(1, 5)) TO STDOUT", stream=io.BytesIO())
    finally:
        close_db_connection(conn)

    traced = [(s.name, s.annotations["db_statement"], s.metadata) for s in segment.subsegments]
    assert [name for name, _, _ in traced] == [
        "## totesys SET",
        "## totesys SELECT",
        "## totesys COPY",
    ]
    assert [metadata["totesys"]["row_count"] for _, _, metadata in traced[1:]] == [3, 5]
    assert traced[2][2]["totesys"]["sql"].startswith("COPY (SELECT")


UNTRACED_STATEMENT = """
import json, sys
from totes_ingest.db_connections import close_db_connection, open_connection
conn = open_connection(json.loads(sys.argv[1]))
conn.run("SELECT 1")
close_db_connection(conn)
print("aws_xray_sdk" in sys.modules)
"""


def test_a_statement_with_tracing_off_imports_no_xray_sdk(db_settings: dict[str, Any]) -> None:
    env = {**os.environ, "POWERTOOLS_TRACE_DISABLED": "true"}

    ran = subprocess.run(
        [sys.executable, "-c", UNTRACED_STATEMENT, json.dumps(db_settings)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )

    assert ran.stdout == "False\n", ran.stderr
