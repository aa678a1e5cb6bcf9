"""The settings of bounded windows: MAX_WINDOW_ROWS, STAGE_CONCURRENCY,
STEP_TIME_BUDGET_SECONDS, EXTRACT_ROWS_PER_SECOND, and the step deadline."""

from __future__ import annotations

import time

import pytest

from totes_ingest import config
from totes_ingest.pipeline import StageSettings

pytestmark = pytest.mark.unit


def test_the_settings_reach_the_stage_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.MAX_WINDOW_ROWS, "2000000")
    monkeypatch.setenv(config.STAGE_CONCURRENCY, "8")
    monkeypatch.setenv(config.EXTRACT_ROWS_PER_SECOND, "250000")
    settings = StageSettings.from_environment()
    assert (settings.max_window_rows, settings.stage_concurrency) == (2_000_000, 8)
    assert settings.rows_per_second == 250_000


@pytest.mark.parametrize(
    ("name", "value", "read"),
    [
        (config.MAX_WINDOW_ROWS, "0", config.max_window_rows),
        (config.STAGE_CONCURRENCY, "0", config.stage_concurrency),
        (config.STAGE_CONCURRENCY, "10001", config.stage_concurrency),
        (config.STEP_TIME_BUDGET_SECONDS, "0", config.step_time_budget_seconds),
        (config.EXTRACT_ROWS_PER_SECOND, "-1", config.extract_rows_per_second),
        (config.END_TIME_SAFETY_MARGIN_SECONDS, "-0.5", config.safety_margin_seconds),
        (config.END_TIME_SAFETY_MARGIN_SECONDS, "nan", config.safety_margin_seconds),
    ],
)
def test_a_value_out_of_range_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, read: object
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        read()  # type: ignore[operator]


def test_the_deadline_is_the_budget_or_the_timeout_less_its_margin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(config.STEP_TIME_BUDGET_SECONDS, "600")
    now = time.monotonic()
    # 900 s left: the budget comes first; 100 s left: the timeout less 30 s
    assert 599 <= config.step_deadline(900_000) - now <= 601
    assert 69 <= config.step_deadline(100_000) - now <= 71
    assert config.step_deadline(10_000) - now <= 1  # less than the margin left: now
