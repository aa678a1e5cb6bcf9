"""AuditSummary: the audit's totals, its failed tables and its verdict."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from totes_ingest.audit_summary import summarize
from totes_ingest.errors import InvalidEvent
from totes_ingest.observability import logger, metrics, step, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@step("AuditSummary")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    results = event.get("results")
    if not isinstance(results, list):
        raise InvalidEvent("AuditSummary input lacks the per-table 'results' list")
    return summarize(results)
