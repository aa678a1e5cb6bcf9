"""CommitTable: commit the staged object to ``table/yyyy/mm/dd/hhmmssffffff.parquet``,
then keep the table's Glue catalog (when ``GLUE_DATABASE`` is set)."""

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
    return pipeline.commit_table(event, Lake(s3_client(), bucket), catalog)
