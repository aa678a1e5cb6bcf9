"""The audit's verdict (the AuditSummary step): totals, failures, whether the lake was whole.

Apart from the audit itself so that AuditSummary, which touches neither the database nor
S3, imports neither their drivers nor pyarrow (tests/unit/test_cold_start.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

from aws_lambda_powertools.metrics import MetricUnit

from totes_ingest.observability import logger, put_metric
from totes_ingest.run_summary import _reason

Payload = dict[str, Any]

COUNTS: Final = ("missing", "repaired", "newer_in_lake", "deleted", "tombstoned", "revived")
# Statuses of a table the audit judged whole (after any repair): see audit.TableAudit.
WHOLE: Final = frozenset({"whole", "repaired", "skipped"})


def _count(result: Mapping[str, Any], name: str) -> int:
    value = result.get(name) or 0
    return int(value) if isinstance(value, int | float) else 0


def summarize(results: Iterable[Mapping[str, Any]]) -> Payload:
    """Totals over the tables, the failed ones (with why), and the verdict.

    ``whole`` is false when a table failed, when any version was missing (repaired or
    not: something lost it), when a key was newer in the lake than at the source, or a
    table was left not whole (report-only). ``error`` names why, for the Fail state.
    """
    tables: dict[str, str] = {}
    failures: dict[str, str] = {}
    totals = dict.fromkeys(COUNTS, 0)
    findings: dict[str, dict[str, int]] = {name: {} for name in ("missing", "newer_in_lake")}
    for result in results:
        table = str(result.get("table"))
        status = str(result.get("status"))
        tables[table] = status
        if status == "failed":
            failures[table] = f"{result.get('error')}: {_reason(result.get('cause'))}"
            continue
        for name in COUNTS:
            totals[name] += _count(result, name)
        for name, found in findings.items():
            if _count(result, name):
                found[table] = _count(result, name)
    not_whole = sorted(t for t, s in tables.items() if s not in WHOLE and s != "failed")
    error = None
    if failures:
        error = "AuditTablesFailed"
    elif totals["missing"] or totals["newer_in_lake"] or not_whole:
        error = "LakeNotWhole"
    cause = {"failed": failures, "not_whole": not_whole, **findings, "totals": totals}
    put_metric("AuditTablesFailed", MetricUnit.Count, len(failures), None)
    put_metric("AuditTablesNotWhole", MetricUnit.Count, len(not_whole), None)
    extra = {"tables": tables, **cause}
    if failures:
        logger.critical("Audit failed for some tables", extra=extra)
    elif error:
        logger.critical("Audit found the lake not whole", extra=extra)
    else:
        logger.info("Audit finished: the lake is whole", extra=extra)
    return {
        "tables": tables,
        "totals": totals,
        "failed_count": len(failures),
        "whole": error is None,
        "error": error,
        "cause": None if error is None else json.dumps(cause),
    }
