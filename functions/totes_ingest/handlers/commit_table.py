"""CommitTable: commit the staged object to ``table/yyyy/mm/dd/hhmmssffffff.parquet``,
then keep the table's Glue catalog (when ``GLUE_DATABASE`` is set).

The state machine's CommitWindows state calls it too, with a plan of sub-windows
(``plan`` in the event): it then commits them in chain order within the step's time
budget (``pipeline.commit_windows``).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from totes_ingest import config, pipeline
from totes_ingest.aws import glue_client, s3_client
from totes_ingest.glue_catalog import GlueCatalog
from totes_ingest.lake import Lake
from totes_ingest.observability import logger, metrics, step, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@step("CommitTable")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    bucket = config.ingest_bucket()
    database = config.glue_database()
    catalog = None if database is None else GlueCatalog(glue_client(), database, bucket)
    lake = Lake(s3_client(), bucket)
    if "plan" in event:
        deadline = config.step_deadline(context.get_remaining_time_in_millis())
        return pipeline.commit_windows(event, lake, catalog, deadline=deadline)
    return pipeline.commit_table(event, lake, catalog)
