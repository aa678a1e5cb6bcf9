"""The tracer is Powertools' own when tracing is on, and not loaded at all when it is off."""

from __future__ import annotations

from typing import Any

import pytest

from totes_ingest.observability import LazyTracer

pytestmark = pytest.mark.unit


def _handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"echo": event["x"]}


def test_outside_lambda_the_handler_runs_untraced_and_no_tracer_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LAMBDA_TASK_ROOT", raising=False)
    tracer = LazyTracer("svc")
    handler = tracer.capture_lambda_handler(capture_response=False)(_handler)

    assert handler({"x": 1}, None) == {"echo": 1}
    assert tracer._tracer is None


class _Sent:
    """An X-Ray emitter that keeps what it is given (Powertools streams each subsegment)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def send_entity(self, entity: Any) -> None:
        self.names += [entity.name] + [s.name for s in entity.subsegments]

    def set_daemon_address(self, address: str | None) -> None:
        pass


def test_in_lambda_with_tracing_on_the_handler_is_a_subsegment_of_the_invocation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aws_lambda_powertools import Tracer
    from aws_xray_sdk import global_sdk_config
    from aws_xray_sdk.core import xray_recorder

    Tracer._reset_config()  # Powertools keeps an earlier Tracer's settings class-wide

    # GIVEN a Lambda environment with tracing on and an open segment (as Lambda's is)
    monkeypatch.setenv("LAMBDA_TASK_ROOT", "/var/task")
    monkeypatch.delenv("POWERTOOLS_TRACE_DISABLED", raising=False)
    monkeypatch.delenv("AWS_SAM_LOCAL", raising=False)
    tracer = LazyTracer("svc")
    handler = tracer.capture_lambda_handler(capture_response=False)(_handler)
    enabled = global_sdk_config.sdk_enabled()
    global_sdk_config.set_sdk_enabled(True)
    sent = _Sent()
    emitter = xray_recorder.emitter
    xray_recorder.configure(sampling=False, context_missing="LOG_ERROR", emitter=sent)
    segment = xray_recorder.begin_segment("invocation")
    try:
        # WHEN the handler runs
        assert handler({"x": 2}, None) == {"echo": 2}
        # THEN Powertools' tracer was built and recorded the handler's subsegment
        assert tracer._tracer is not None
        assert "## _handler" in sent.names + [s.name for s in segment.subsegments]
    finally:
        xray_recorder.clear_trace_entities()
        xray_recorder.configure(emitter=emitter)
        Tracer._reset_config()
        global_sdk_config.set_sdk_enabled(enabled)


def test_tracing_disabled_by_setting_runs_untraced_in_lambda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LAMBDA_TASK_ROOT", "/var/task")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    tracer = LazyTracer("svc")
    handler = tracer.capture_lambda_handler(capture_response=False)(_handler)

    assert handler({"x": 3}, None) == {"echo": 3}
    assert tracer._tracer is None
