"""AWS clients and the translation of their failures into the project's errors."""

from __future__ import annotations

import threading
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


# Inside ``reused_clients()``: the one client of each service, made at its first use.
_reused: dict[str, Any] | None = None
_reused_lock = threading.Lock()


def _client(service: str) -> Any:
    if _reused is None:
        return boto3.client(service, config=_CLIENT_CONFIG)
    with _reused_lock:
        if service not in _reused:
            _reused[service] = boto3.client(service, config=_CLIENT_CONFIG)
        return _reused[service]


@contextmanager
def reused_clients() -> Iterator[None]:
    """Inside the block, each service's client is made once and shared by every caller.

    For a process that runs many steps in a row, as ``totes-ingest run`` does (two dozen
    handler invocations, each making its clients: 5-10 ms of CPU apiece). Clients are
    thread-safe; the block must sit inside whatever fixed their region and credentials
    (the CLI's mocked account), which then hold for all of it.
    """
    global _reused
    saved, _reused = _reused, {}
    try:
        yield
    finally:
        _reused = saved


def s3_client() -> Any:
    return _client("s3")


def glue_client() -> Any:
    return _client("glue")


def is_transient(code: str) -> bool:
    """Whether an AWS error code is worth retrying (throttling, timeouts, server errors)."""
    return code in _TRANSIENT_CODES


def secrets_client() -> Any:
    return _client("secretsmanager")


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
