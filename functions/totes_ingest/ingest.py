"""The seed's single-function ingest: every table, in one process, without Step Functions.

The deployed pipeline is the state machine; this handler runs the same steps in the
order the state machine runs them (for ``sam local invoke`` of a whole run, or an
account without Step Functions) and returns the same ``{table: file_key}`` dictionary.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from totes_ingest import config, pipeline
from totes_ingest.aws import s3_client
from totes_ingest.db_connections import close_db_connection, connect_to_db
from totes_ingest.errors import IngestError, TablesFailed
from totes_ingest.lake import Lake
from totes_ingest.observability import logger, step

__all__ = ["TablesFailed", "lambda_handler", "run_ingest"]

_ITEM_FIELDS = ("end_time", "run_id", "source_timezone", "hold")


def run_ingest(event: object, conn: Any, lake: Lake) -> dict[str, str]:
    """Run every step for every table of ``event``; raise TablesFailed naming the failures."""
    run = pipeline.start_run(event, conn, pipeline.RunSettings.from_environment(max_concurrency=1))
    stage = pipeline.StageSettings.from_environment()
    results: list[dict[str, Any]] = []
    for table in run["tables"]:
        item = {"table": table, **{name: run[name] for name in _ITEM_FIELDS}}
        try:
            item = pipeline.find_watermark(item, lake)
            item = pipeline.stage_table(item, conn, lake, **vars(stage))
            if item["rows"] > 0:
                results.append(pipeline.commit_table(item, lake))
        except IngestError as e:
            logger.critical(
                "Table failed", extra={"table": table, "error": type(e).__name__, "reason": str(e)}
            )
            results.append(
                {"table": table, "status": "failed", "error": type(e).__name__, "cause": str(e)}
            )
    summary = pipeline.aggregate(results)
    if summary["failed_count"]:
        raise TablesFailed(summary["cause"])
    output: dict[str, str] = summary["output"]
    return output


@logger.inject_lambda_context
@step("Ingest")
def lambda_handler(event: Any, context: LambdaContext) -> dict[str, str]:
    """``{"tables_to_query": [...]}`` -> ``{table: file_key}`` for tables with new rows."""
    conn = connect_to_db()
    try:
        return run_ingest(event, conn, Lake(s3_client(), config.ingest_bucket()))
    finally:
        close_db_connection(conn)
