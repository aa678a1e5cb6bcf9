"""AuditTable: audit one table (holding its lease), repair what is missing, summarise it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from totes_ingest import config
from totes_ingest.audit import AuditSettings
from totes_ingest.audit_step import audit_one
from totes_ingest.aws import s3_client
from totes_ingest.db_connections import close_db_connection, connect_to_db
from totes_ingest.lake import Lake
from totes_ingest.observability import logger, metrics, step, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@step("AuditTable")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    lake = Lake(s3_client(), config.ingest_bucket())
    settings = AuditSettings.from_environment(repair=config.audit_repair())
    lease_ttl = timedelta(seconds=config.audit_lease_seconds())
    conn = connect_to_db()
    try:
        return audit_one(event, conn, lake, settings, lease_ttl=lease_ttl)
    finally:
        close_db_connection(conn)
