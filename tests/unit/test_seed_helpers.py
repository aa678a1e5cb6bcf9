"""The seed's small functions: time format, file keys, the window query."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from totes_ingest.format_time import format_time, parse_time
from totes_ingest.generate_file_key import generate_file_key, parse_file_key
from totes_ingest.generate_new_entry_query import DateFormatError, generate_new_entry_query

pytestmark = pytest.mark.unit


def test_format_time_keeps_microseconds() -> None:
    assert format_time(datetime(2022, 11, 3, 14, 20, 51, 563001)) == "2022-11-03 14:20:51.563001"


def test_format_time_converts_aware_times_to_utc() -> None:
    moment = datetime(2022, 11, 3, 15, 0, tzinfo=timezone(timedelta(hours=1)))
    assert format_time(moment) == "2022-11-03 14:00:00.000000"


def test_parse_time_inverts_format_time() -> None:
    moment = datetime(2024, 2, 29, 23, 59, 59, 999999)
    assert parse_time(format_time(moment)) == moment


def test_file_key_encodes_the_end_time_to_the_microsecond() -> None:
    key = generate_file_key("sales_order", datetime(2026, 1, 2, 3, 4, 5, 6))
    assert key == "sales_order/2026/01/02/030405000006.parquet"


def test_file_key_round_trips_through_parse_file_key() -> None:
    end = datetime(2026, 11, 25, 21, 3, 47, 123456)
    assert parse_file_key(generate_file_key("payment", end)) == ("payment", end)


def test_file_key_honours_the_extension() -> None:
    assert generate_file_key("currency", datetime(2026, 1, 1), "json").endswith(".json")


@pytest.mark.parametrize("name", ["../etc", "a/b", "Payment", "", "x" * 64, "\uff50ayment"])
def test_file_key_rejects_names_that_are_not_tables(name: str) -> None:
    with pytest.raises(ValueError, match="table name"):
        generate_file_key(name, datetime(2026, 1, 1))


@pytest.mark.parametrize(
    "key",
    [
        "payment/2026/01/01/000000000000.json",
        "payment/2026/13/01/000000000000.parquet",
        "payment/2026/01/01/0000000000.parquet",
        "_staging/payment/x.parquet",
    ],
)
def test_parse_file_key_ignores_keys_that_are_not_lake_keys(key: str) -> None:
    assert parse_file_key(key) is None


def test_query_selects_a_half_open_window_on_last_updated() -> None:
    query = generate_new_entry_query(
        "transaction", "2022-11-03 14:20:51.563000", "2022-11-04 00:00:00.000000"
    )
    assert query == (
        'SELECT * FROM "transaction" WHERE '
        "last_updated >= TIMESTAMP '2022-11-03 14:20:51.563000' AND "
        "last_updated < TIMESTAMP '2022-11-04 00:00:00.000000'"
    )


def test_query_without_start_time_selects_from_the_beginning() -> None:
    query = generate_new_entry_query("currency", None, "2022-11-04 00:00:00.000000")
    assert query.endswith("WHERE last_updated < TIMESTAMP '2022-11-04 00:00:00.000000'")


@pytest.mark.parametrize(
    "bad",
    [
        "2022-11-03",
        "2022-11-03 14:20:51.563' OR '1'='1",
        "2022-13-03 14:20:51",
        "\uff12\uff10\uff12\uff12-11-03 14:20:51",
        "yesterday",
        20221103,
    ],
)
def test_query_rejects_times_that_are_not_format_time_strings(bad: object) -> None:
    with pytest.raises(DateFormatError):
        generate_new_entry_query("currency", bad, "2022-11-04 00:00:00.000000")  # type: ignore[arg-type]
    with pytest.raises(DateFormatError):
        generate_new_entry_query("currency", None, bad)  # type: ignore[arg-type]


def test_query_rejects_a_table_name_carrying_sql() -> None:
    with pytest.raises(ValueError, match="table name"):
        generate_new_entry_query("staff; DROP TABLE currency", None, "2022-11-04 00:00:00")


def test_date_format_error_is_a_value_error() -> None:
    assert issubclass(DateFormatError, ValueError)


def test_format_time_of_now_is_accepted_by_the_query() -> None:
    generate_new_entry_query("currency", None, format_time(datetime.now(UTC)))
