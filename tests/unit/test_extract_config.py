"""EXTRACT_CONNECTIONS: how many connections one extract reads a table with."""

from __future__ import annotations

import pytest

from totes_ingest import config
from totes_ingest.pipeline import StageSettings

pytestmark = pytest.mark.unit


def test_one_connection_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.EXTRACT_CONNECTIONS, raising=False)
    assert config.extract_connections() == 1
    assert StageSettings.from_environment().extract_connections == 1


def test_the_setting_reaches_the_stage_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.EXTRACT_CONNECTIONS, "4")
    assert config.extract_connections() == 4
    assert StageSettings.from_environment().extract_connections == 4


@pytest.mark.parametrize("value", ["0", "-2"])
def test_fewer_than_one_connection_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(config.EXTRACT_CONNECTIONS, value)
    with pytest.raises(ValueError, match=f"EXTRACT_CONNECTIONS must be at least 1, not {value}"):
        config.extract_connections()


def test_a_value_that_is_not_a_number_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.EXTRACT_CONNECTIONS, "two")
    with pytest.raises(ValueError, match="two"):
        config.extract_connections()
