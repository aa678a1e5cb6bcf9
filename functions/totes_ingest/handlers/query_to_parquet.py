"""QueryToParquet: stream the table's window into a staged Parquet object (or, when it
holds more than MAX_WINDOW_ROWS rows, save its plan of sub-windows for StageWindows)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from totes_ingest import config, pipeline
from totes_ingest.aws import s3_client
from totes_ingest.db_connections import close_db_connection, connect_to_db
from totes_ingest.lake import Lake
from totes_ingest.observability import logger, metrics, step, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@step("QueryToParquet")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    lake = Lake(s3_client(), config.ingest_bucket())
    conn = connect_to_db()
    try:
        settings = pipeline.StageSettings.from_environment()
        deadline = config.step_deadline(context.get_remaining_time_in_millis())
        return pipeline.stage_table(
            event, conn, lake, **vars(settings), connect=connect_to_db, deadline=deadline
        )
    finally:
        close_db_connection(conn)
