"""Logging, metrics and tracing, shared by every step.

One service name, so every line of a run can be found together. Handlers bind the run's
``run_id`` and the ``table`` to every line with thread-local keys.

Metrics are Powertools ``Metrics``: each handler is wrapped in
``metrics.log_metrics(capture_cold_start_metric=True)``, which publishes the invocation's
metrics as one EMF document (dimensions: service, step and, for a table's steps, table)
and a ``ColdStart`` metric on a cold start. Lambda runs one invocation per process; the
local runner runs the Map's iterations as threads of one process, where Powertools'
shared metric set would give one table's rows another table's dimensions, so the
provider keeps one metric set per thread (:class:`ThreadLocalEMFProvider`).

Tracing is Powertools' ``Tracer``, built on first use (:class:`LazyTracer`): building it
imports aws_xray_sdk and botocore (0.1-0.3 s), which a step pays only when it traces.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import (
    AmazonCloudWatchEMFProvider,
)

SERVICE: Final = "totes-ingest"
DEFAULT_NAMESPACE: Final = "TotesIngest"

logger = Logger(service=SERVICE)

F = TypeVar("F", bound=Callable[..., Any])


def tracing_disabled() -> bool:
    """Powertools' own rule (``Tracer._is_tracer_disabled``), without building a Tracer."""
    from aws_lambda_powertools.shared.functions import resolve_truthy_env_var_choice

    if resolve_truthy_env_var_choice(env=os.getenv("POWERTOOLS_TRACE_DISABLED", "false")):
        return True
    outside_lambda = not os.getenv("LAMBDA_TASK_ROOT")
    return outside_lambda or bool(os.getenv("AWS_SAM_LOCAL") or os.getenv("AWS_CHALICE_CLI_MODE"))


class LazyTracer:
    """Powertools' ``Tracer``, built (and aws_xray_sdk imported) when first needed.

    A handler decorated with ``capture_lambda_handler`` is traced exactly as Powertools
    traces it whenever tracing is on (in Lambda with ``Tracing: Active``); where it is off
    (locally, in tests, ``POWERTOOLS_TRACE_DISABLED``) the handler is called as it is and
    the X-Ray SDK is never loaded. ``provider`` (the X-Ray recorder, for subsegments)
    builds the tracer whatever the setting, as Powertools' would.
    """

    def __init__(self, service: str) -> None:
        self._service = service
        self._tracer: Any = None
        self._lock = threading.Lock()

    def real(self) -> Any:
        """The Powertools ``Tracer`` (built once, thread-safely)."""
        with self._lock:
            if self._tracer is None:
                from aws_lambda_powertools import Tracer

                self._tracer = Tracer(service=self._service)
            return self._tracer

    @property
    def provider(self) -> Any:
        return self.real().provider

    def in_use(self) -> bool:
        """Whether a subsegment may be recorded: the Tracer is built, or tracing is on (a
        process with tracing off never builds it, and so never imports the X-Ray SDK)."""
        return self._tracer is not None or not tracing_disabled()

    def capture_lambda_handler(self, *, capture_response: bool | None = None) -> Callable[[F], F]:
        """Powertools' ``capture_lambda_handler``, deciding at the first invocation."""
        return functools.partial(self._capture, capture_response=capture_response)

    def _capture(self, handler: F, *, capture_response: bool | None) -> F:
        traced: list[Callable[..., Any]] = []

        @functools.wraps(handler)
        def invocation(event: Any, context: Any, **kwargs: Any) -> Any:
            if tracing_disabled():
                return handler(event, context, **kwargs)
            if not traced:
                traced.append(
                    self.real().capture_lambda_handler(handler, capture_response=capture_response)
                )
            return traced[0](event, context, **kwargs)

        return invocation  # type: ignore[return-value]


tracer = LazyTracer(SERVICE)


@dataclass
class _ThreadMetrics:
    """What Powertools' provider accumulates for one invocation, and that invocation."""

    metric_set: dict[str, Any] = field(default_factory=dict)
    dimension_set: dict[str, str] = field(default_factory=dict)
    metadata_set: dict[str, Any] = field(default_factory=dict)
    dimension_sets: list[dict[str, str]] = field(default_factory=list)
    timestamp: int | None = None
    # Inside ``log_metrics``: an invocation whose metrics are published at its end; its
    # step and table (set by ``step``) are its dimensions.
    open: bool = False
    step: str | None = None
    table: str | None = None


def _per_thread(name: str) -> Any:
    return property(
        lambda self: getattr(self._thread(), name),
        lambda self, value: setattr(self._thread(), name, value),
    )


class ThreadLocalEMFProvider(AmazonCloudWatchEMFProvider):
    """Powertools' CloudWatch EMF provider with one metric set per thread.

    Everything else (validation, serialisation, flushing, the cold-start metric) is the
    provider's own; only where it keeps the metrics, dimensions and metadata changes.
    """

    metric_set = _per_thread("metric_set")
    dimension_set = _per_thread("dimension_set")
    metadata_set = _per_thread("metadata_set")
    dimension_sets = _per_thread("dimension_sets")
    timestamp = _per_thread("timestamp")

    def __init__(self, **kwargs: Any) -> None:
        self._local = threading.local()
        super().__init__(**kwargs)

    def _thread(self) -> _ThreadMetrics:
        state: _ThreadMetrics | None = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _ThreadMetrics()
        return state

    def current(self) -> _ThreadMetrics:
        """This thread's invocation (``open`` inside ``log_metrics``), its step and table."""
        return self._thread()

    def log_metrics(
        self,
        lambda_handler: Callable[..., Any] | None = None,
        capture_cold_start_metric: bool = False,
        raise_on_empty_metrics: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Powertools' ``log_metrics``, marking this thread as inside an invocation."""
        if lambda_handler is None:
            return functools.partial(
                self.log_metrics,
                capture_cold_start_metric=capture_cold_start_metric,
                raise_on_empty_metrics=raise_on_empty_metrics,
                **kwargs,
            )
        publishing = super().log_metrics(
            lambda_handler=lambda_handler,
            capture_cold_start_metric=capture_cold_start_metric,
            raise_on_empty_metrics=raise_on_empty_metrics,
            **kwargs,
        )

        @functools.wraps(lambda_handler)
        def invocation(event: Any, context: Any, *args: Any, **kw: Any) -> Any:
            state = self._thread()
            state.open = True
            try:
                return publishing(event, context, *args, **kw)
            finally:
                state.open, state.step, state.table = False, None, None

        return invocation


provider = ThreadLocalEMFProvider(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", DEFAULT_NAMESPACE), service=SERVICE
)
metrics = Metrics(provider=provider)


def put_metric(
    name: str, unit: MetricUnit, value: float, table: str | None, step: str | None = None
) -> None:
    """One CloudWatch metric, dimensioned by table (and step).

    Inside a step of that table it joins the invocation's metrics (published together by
    ``log_metrics``); otherwise (the seed's one-function ingest, which handles every table
    in one invocation, or a library call outside any handler) it is published at once.
    """
    invocation = provider.current()
    if invocation.open and table == invocation.table and step in (None, invocation.step):
        metrics.add_metric(name=name, unit=unit, value=value)
        return
    alone = AmazonCloudWatchEMFProvider(namespace=provider.namespace, service=SERVICE)
    if table:
        alone.add_dimension(name="table", value=table)
    if step:
        alone.add_dimension(name="step", value=step)
    alone.add_metric(name=name, unit=unit, value=value)
    alone.flush_metrics()


def bind_keys(event: Mapping[str, Any]) -> None:
    """Tie this thread's log lines to the execution and table of ``event``."""
    logger.thread_safe_clear_keys()
    keys = {k: event[k] for k in ("execution", "run_id", "table") if isinstance(event.get(k), str)}
    if keys:
        logger.thread_safe_append_keys(**keys)


def step(name: str) -> Callable[[F], F]:
    """Wrap a handler: bind log keys, log failure at CRITICAL, record the step's duration.

    Inside ``metrics.log_metrics`` (the decorator above it on every handler), the
    invocation's metrics carry the step and the table as dimensions.
    """

    def decorate(handler: F) -> F:
        @functools.wraps(handler)
        def wrapper(event: Any, context: Any) -> Any:
            started = time.perf_counter()
            table = event.get("table") if isinstance(event, Mapping) else None
            table = table if isinstance(table, str) else None
            if isinstance(event, Mapping):
                bind_keys(event)
            invocation = provider.current()
            if invocation.open:
                invocation.step, invocation.table = name, table
                metrics.add_dimension(name="step", value=name)
                if table:
                    metrics.add_dimension(name="table", value=table)
            try:
                return handler(event, context)
            except Exception as e:
                logger.critical(
                    f"{name} failed",
                    extra={"step": name, "error": type(e).__name__, "reason": str(e)},
                )
                raise
            finally:
                duration = time.perf_counter() - started
                put_metric("StepDuration", MetricUnit.Seconds, duration, table, step=name)

        return wrapper  # type: ignore[return-value]

    return decorate
