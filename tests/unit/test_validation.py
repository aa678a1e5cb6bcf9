"""The execution input is checked before anything is read or written."""

from __future__ import annotations

import pytest

from totes_ingest.errors import InvalidEvent
from totes_ingest.validation import tables_from_event

pytestmark = pytest.mark.unit


def test_a_list_of_table_names_is_accepted() -> None:
    assert tables_from_event({"tables_to_query": ["currency", "payment"]}) == [
        "currency",
        "payment",
    ]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({}, "no 'tables_to_query'"),
        ([], "JSON object"),
        ({"tables_to_query": "currency"}, "must be a list"),
        ({"tables_to_query": {"currency": 1}}, "must be a list"),
        ({"tables_to_query": []}, "empty"),
        ({"tables_to_query": ["currency", "currency"]}, "duplicate table names: currency"),
        ({"tables_to_query": ["currency", 7]}, "not valid table names: 7"),
        ({"tables_to_query": [None]}, "not valid table names"),
        ({"tables_to_query": ["staff; DROP TABLE currency"]}, "not valid table names"),
        ({"tables_to_query": ['staff"']}, "not valid table names"),
        ({"tables_to_query": ["staff'--"]}, "not valid table names"),
        ({"tables_to_query": ["\u0455taff"]}, "not valid table names"),  # Cyrillic dze
        ({"tables_to_query": ["s" * 10_000]}, "not valid table names"),
        ({"tables_to_query": ["t"] * 101}, "at most 100"),
    ],
)
def test_malformed_input_is_rejected_with_a_named_error(event: object, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        tables_from_event(event)


def test_a_huge_name_is_not_echoed_in_full() -> None:
    with pytest.raises(InvalidEvent) as raised:
        tables_from_event({"tables_to_query": ["s" * 10_000]})
    assert len(str(raised.value)) < 200
