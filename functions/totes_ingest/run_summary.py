"""The run's summary (the Aggregate step): its ``{table: key}`` output and its failures.

Apart from the pipeline's other steps so that Aggregate, which touches neither the
database nor S3, imports neither their drivers nor pyarrow (tests/unit/test_cold_start.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from totes_ingest.observability import logger

Payload = dict[str, Any]


def _reason(cause: object) -> str:
    """The error message inside a Lambda failure's Cause (a JSON document), or the cause."""
    if isinstance(cause, str):
        try:
            parsed = json.loads(cause)
        except ValueError:
            return cause
        if isinstance(parsed, dict) and "errorMessage" in parsed:
            return str(parsed["errorMessage"])
    return str(cause)


def aggregate(results: Iterable[Mapping[str, Any]]) -> Payload:
    """The seed's ``{table: file_key}`` output, and a summary of the tables that failed."""
    output: dict[str, str] = {}
    failures: dict[str, str] = {}
    for result in results:
        table = str(result.get("table"))
        if result.get("status") == "written" and result.get("key"):
            output[table] = str(result["key"])
        elif result.get("status") == "failed":
            failures[table] = f"{result.get('error')}: {_reason(result.get('cause'))}"
    summary: Payload = {
        "output": output,
        "failed_count": len(failures),
        "error": None,
        "cause": None,
    }
    if failures:
        summary["error"] = "TablesFailed"
        summary["cause"] = json.dumps({"failed": failures, "written": output})
        logger.critical("Run failed for some tables", extra={"failed": failures, "written": output})
    else:
        logger.info("Run finished", extra={"written": output})
    return summary
