"""StartRun: validate the execution input and fix the run's end time."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from totes_ingest import pipeline
from totes_ingest.db_connections import close_db_connection, connect_to_db
from totes_ingest.observability import logger, metrics, step, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@step("StartRun")
def lambda_handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    conn = connect_to_db()
    try:
        return pipeline.start_run(event, conn, pipeline.RunSettings.from_environment())
    finally:
        close_db_connection(conn)
