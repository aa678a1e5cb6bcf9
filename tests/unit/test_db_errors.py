"""The translation of driver failures (db_errors), which finds pg8000's exceptions only
once the driver is loaded: the translations themselves are unchanged."""

from __future__ import annotations

import pg8000.exceptions
import pytest

from totes_ingest.db_errors import source_errors
from totes_ingest.errors import SourceError, SourceUnavailable

pytestmark = pytest.mark.unit


def test_a_server_error_becomes_a_source_error_naming_the_action_and_sqlstate() -> None:
    error = pg8000.exceptions.DatabaseError({"C": "42P01", "M": "relation missing"})
    expected = r"count failed: relation missing \(SQLSTATE 42P01\)"
    with pytest.raises(SourceError, match=expected), source_errors("count", table="sales_order"):
        raise error


def test_a_transient_server_error_becomes_source_unavailable() -> None:
    error = pg8000.exceptions.DatabaseError({"C": "57P01", "M": "terminating connection"})
    with pytest.raises(SourceUnavailable) as raised, source_errors("count"):
        raise error
    assert raised.value.__cause__ is error


@pytest.mark.parametrize(
    "error", [pg8000.exceptions.InterfaceError("network error"), ConnectionResetError()]
)
def test_a_lost_connection_becomes_source_unavailable(error: Exception) -> None:
    lost = "connection lost during copy"
    with pytest.raises(SourceUnavailable, match=lost), source_errors("copy"):
        raise error


def test_any_other_error_passes_through_unchanged() -> None:
    with pytest.raises(KeyError), source_errors("copy"):
        raise KeyError("x")
