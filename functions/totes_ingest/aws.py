"""AWS clients and the translation of their failures into the project's errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from boto3.exceptions import S3TransferFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from totes_ingest.errors import LakeError, LakeUnavailable

# Standard retry mode already backs off on throttling; Step Functions retries on top.
_CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5})

_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
        "ConcurrentModificationException",
        "InternalServiceException",
        "OperationTimeoutException",
    }
)


def s3_client() -> Any:
    return boto3.client("s3", config=_CLIENT_CONFIG)


def glue_client() -> Any:
    return boto3.client("glue", config=_CLIENT_CONFIG)


def is_transient(code: str) -> bool:
    """Whether an AWS error code is worth retrying (throttling, timeouts, server errors)."""
    return code in _TRANSIENT_CODES


def secrets_client() -> Any:
    return boto3.client("secretsmanager", config=_CLIENT_CONFIG)


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def as_lake_error(
    error: Exception, action: str, *, table: str | None = None, window: str | None = None
) -> LakeError | LakeUnavailable:
    """LakeUnavailable for throttling, timeouts and server errors; LakeError otherwise."""
    if isinstance(error, ClientError):
        code = error_code(error)
        kind = LakeUnavailable if code in _TRANSIENT_CODES else LakeError
        return kind(f"S3 {action} failed: {code}", table=table, window=window)
    return LakeUnavailable(
        f"S3 {action} failed: {type(error).__name__}", table=table, window=window
    )


@contextmanager
def lake_errors(
    action: str, *, table: str | None = None, window: str | None = None
) -> Iterator[None]:
    """Re-raise S3 failures inside the block as the project's errors."""
    try:
        yield
    except (ClientError, BotoCoreError, S3TransferFailedError) as e:
        raise as_lake_error(e, action, table=table, window=window) from e
