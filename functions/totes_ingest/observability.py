"""Logging, metrics and tracing, shared by every step.

One service name, so every line of a run can be found together. Handlers bind the run's
``run_id`` and the ``table`` to every line with thread-local keys, and emit each metric
on its own (``single_metric``), so steps running side by side in one process (the local
runner's Map) never mix their keys or dimensions.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric

SERVICE: Final = "totes-ingest"
DEFAULT_NAMESPACE: Final = "TotesIngest"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)

F = TypeVar("F", bound=Callable[..., Any])


def put_metric(
    name: str, unit: MetricUnit, value: float, table: str | None, step: str | None = None
) -> None:
    """One CloudWatch EMF metric, dimensioned by table (and step, for durations).

    Honours ``POWERTOOLS_METRICS_DISABLED`` (which ``single_metric`` itself ignores).
    """
    if os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() in ("1", "true"):
        return
    namespace = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", DEFAULT_NAMESPACE)
    dimensions = {"table": table} if table else {}
    if step:
        dimensions["step"] = step
    with single_metric(
        name=name, unit=unit, value=value, namespace=namespace, default_dimensions=dimensions
    ):
        pass


def bind_keys(event: Mapping[str, Any]) -> None:
    """Tie this thread's log lines to the execution and table of ``event``."""
    logger.thread_safe_clear_keys()
    keys = {k: event[k] for k in ("execution", "run_id", "table") if isinstance(event.get(k), str)}
    if keys:
        logger.thread_safe_append_keys(**keys)


def step(name: str) -> Callable[[F], F]:
    """Wrap a handler: bind log keys, log failure at CRITICAL, record the step's duration."""

    def decorate(handler: F) -> F:
        @functools.wraps(handler)
        def wrapper(event: Any, context: Any) -> Any:
            started = time.perf_counter()
            table = event.get("table") if isinstance(event, Mapping) else None
            if isinstance(event, Mapping):
                bind_keys(event)
            try:
                return handler(event, context)
            except Exception as e:
                logger.critical(
                    f"{name} failed",
                    extra={"step": name, "error": type(e).__name__, "reason": str(e)},
                )
                raise
            finally:
                put_metric(
                    "StepDuration",
                    MetricUnit.Seconds,
                    time.perf_counter() - started,
                    table if isinstance(table, str) else None,
                    step=name,
                )

        return wrapper  # type: ignore[return-value]

    return decorate
