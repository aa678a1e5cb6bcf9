"""Metrics are Powertools Metrics, one EMF document per invocation, never mixed between
invocations running side by side in one process (the local runner's Map threads)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.provider import cold_start

from totes_ingest.handlers import aggregate
from totes_ingest.observability import metrics, put_metric, step

pytestmark = pytest.mark.unit


def context(name: str = "AggregateFunction") -> Any:
    return SimpleNamespace(
        function_name=name,
        function_version="$LATEST",
        memory_limit_in_mb=256,
        invoked_function_arn=f"arn:aws:lambda:eu-west-2:123456789012:function:{name}",
        aws_request_id="req-1",
    )


def documents(out: str) -> list[dict[str, Any]]:
    """The EMF documents among the lines printed (log lines are JSON without ``_aws``)."""
    found = []
    for line in out.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            found.append(json.loads(line))
    return found


def metric_names(document: dict[str, Any]) -> set[str]:
    return {m["Name"] for m in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]}


def dimension_names(document: dict[str, Any]) -> list[list[str]]:
    dimensions: list[list[str]] = document["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
    return dimensions


@pytest.fixture(autouse=True)
def warm() -> Iterator[None]:
    """A warm process unless a test asks for a cold start."""
    cold_start.is_cold_start = False
    yield
    cold_start.is_cold_start = False


@pytest.fixture
def cold() -> None:
    cold_start.is_cold_start = True


@metrics.log_metrics(capture_cold_start_metric=True)
@step("CommitTable")
def commit_handler(event: dict[str, Any], context: Any) -> None:
    put_metric("RowsIngested", MetricUnit.Count, event["rows"], event["table"])
    put_metric("BytesWritten", MetricUnit.Bytes, event["rows"] * 100, event["table"])


def test_an_invocation_publishes_its_metrics_in_one_document_by_service_step_and_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    commit_handler({"table": "sales_order", "rows": 7}, context())

    (document,) = documents(capsys.readouterr().out)
    assert metric_names(document) == {"RowsIngested", "BytesWritten", "StepDuration"}
    assert sorted(dimension_names(document)[0]) == ["service", "step", "table"]
    assert (document["service"], document["step"], document["table"]) == (
        "totes-ingest",
        "CommitTable",
        "sales_order",
    )
    assert document["RowsIngested"] == [7.0]
    assert document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "TotesIngest"


def test_a_real_handler_publishes_a_cold_start_metric_once(
    cold: None, capsys: pytest.CaptureFixture[str]
) -> None:
    aggregate.lambda_handler({"results": []}, context())
    aggregate.lambda_handler({"results": []}, context())

    published = documents(capsys.readouterr().out)
    cold_starts = [d for d in published if "ColdStart" in metric_names(d)]
    durations = [d for d in published if "StepDuration" in metric_names(d)]
    assert len(cold_starts) == 1
    assert cold_starts[0]["function_name"] == "AggregateFunction"
    assert [d["step"] for d in durations] == ["Aggregate", "Aggregate"]
    assert all("table" not in d for d in durations)


def test_invocations_in_concurrent_threads_never_mix_their_tables(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tables = [f"table_{i}" for i in range(8)]
    barrier = threading.Barrier(len(tables))

    @metrics.log_metrics
    @step("CommitTable")
    def interleaved(event: dict[str, Any], context: Any) -> None:
        for _ in range(20):
            barrier.wait(timeout=10)  # every thread inside its invocation at once
            put_metric("RowsIngested", MetricUnit.Count, event["rows"], event["table"])

    threads = [
        threading.Thread(target=interleaved, args=({"table": t, "rows": i}, context()))
        for i, t in enumerate(tables)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    published = documents(capsys.readouterr().out)
    assert sorted(d["table"] for d in published) == tables
    for document in published:
        assert document["RowsIngested"] == [float(tables.index(document["table"]))] * 20


def test_a_metric_of_another_table_is_published_on_its_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    @metrics.log_metrics
    @step("Ingest")
    def every_table(event: dict[str, Any], context: Any) -> None:
        put_metric("RowsIngested", MetricUnit.Count, 3, "payment")

    every_table({}, context())

    published = documents(capsys.readouterr().out)
    rows = [d for d in published if "RowsIngested" in metric_names(d)]
    assert [(d["table"], d["service"], d.get("step")) for d in rows] == [
        ("payment", "totes-ingest", None)
    ]
    assert "table" not in next(d for d in published if "StepDuration" in metric_names(d))


def test_a_metric_outside_any_handler_is_published_at_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    put_metric("FreshnessSeconds", MetricUnit.Seconds, 1.5, "staff")

    (document,) = documents(capsys.readouterr().out)
    assert document["table"] == "staff"
    assert document["FreshnessSeconds"] in (1.5, [1.5])


def test_disabled_metrics_publish_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")

    commit_handler({"table": "sales_order", "rows": 7}, context())
    put_metric("FreshnessSeconds", MetricUnit.Seconds, 1.5, "staff")

    assert documents(capsys.readouterr().out) == []
