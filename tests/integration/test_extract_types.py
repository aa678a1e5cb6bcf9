"""Every supported PostgreSQL type round-trips exactly: PostgreSQL -> COPY -> Parquet.

Each test creates a table with one typed column, inserts values (NULL among them),
extracts it, reads the Parquet back and compares with what PostgreSQL returns for the
same rows through pg8000 (or, where pg8000 itself converts lossily, with the server's
own text of each value).
"""

from __future__ import annotations

import json
import math
import struct
import uuid
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pg8000.native
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from totes_ingest.config import TypeProfile
from totes_ingest.errors import UnsupportedColumnType
from totes_ingest.extract import extract_to_parquet
from totes_ingest.pg_types import INTERVAL

pytestmark = pytest.mark.integration

END = "2030-01-01 00:00:00"
NASTY_TEXT = [
    "plain",
    "",
    "Hartmann, Franecki and Ratke",
    "O'Keefe",
    'she said "hi", then ""left""',
    "two\nlines\r\nand a CR\r",
    "back\\slash \\N \\. and \\x00",
    "tab\there",
    "Zoë Ångström, 東京, Ελλάδα",
    "emoji 🚀👩‍👩‍👧",
    ",",
    '"',
    "\n",
    "NULL",
    "  padded  ",
]


def _round_trip(
    conn: pg8000.native.Connection,
    tmp_path: Path,
    column_type: str,
    values: list[str],
    profile: TypeProfile = "portable",
    *,
    fetch: bool = True,
) -> tuple[pa.Field, list[Any], list[Any]]:
    """(Parquet field, values read back from Parquet, values pg8000 returns), in order.

    ``values`` are SQL expressions, inserted one row each; ``profile`` the type mapping.
    ``fetch=False``: pg8000 cannot parse the values (24:00:00), none are returned.
    """
    conn.run(
        f"CREATE TABLE t (id serial PRIMARY KEY, v {column_type},"
        " last_updated timestamp NOT NULL DEFAULT '2024-01-01')"
    )
    for value in values:
        conn.run(f"INSERT INTO t (v) VALUES ({value})")
    path = tmp_path / "t.parquet"
    result = extract_to_parquet(conn, "t", None, END, path, type_profile=profile)
    table = pq.read_table(path)
    assert result.rows == table.num_rows == len(values)
    assert table.schema == result.schema
    expected = [row[0] for row in conn.run("SELECT v FROM t ORDER BY id")] if fetch else []
    return table.schema.field("v"), table.column("v").to_pylist(), expected


def _server_text(conn: pg8000.native.Connection) -> list[str | None]:
    return [row[0] for row in conn.run("SELECT v::text FROM t ORDER BY id")]


def test_integers_keep_their_width_and_extremes(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    for column_type, arrow_type, bits in [
        ("smallint", pa.int16(), 16),
        ("integer", pa.int32(), 32),
        ("bigint", pa.int64(), 64),
    ]:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        field, got, expected = _round_trip(
            conn, tmp_path, column_type, [str(low), str(high), "0", "-1", "NULL"]
        )
        assert field.type == arrow_type
        assert got == expected == [low, high, 0, -1, None]
        conn.run("DROP TABLE t")


def test_constrained_numeric_is_a_decimal_of_its_precision_and_scale(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    values = ["0", "-99999999.99", "12345678.90", "0.01", "2.5", "NULL"]
    field, got, expected = _round_trip(conn, tmp_path, "numeric(10, 2)", values)
    assert field.type == pa.decimal128(10, 2)
    assert got == expected
    assert [str(v) for v in got if v is not None] == [
        "0.00",
        "-99999999.99",
        "12345678.90",
        "0.01",
        "2.50",
    ]


def test_numeric_wider_than_38_digits_is_the_servers_exact_text(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    values = ["'" + "9" * 45 + "." + "9" * 5 + "'", "'-0.00001'", "'1.5'", "NULL"]
    field, got, expected = _round_trip(conn, tmp_path, "numeric(50, 5)", values)
    assert field.type == pa.string()
    assert got == _server_text(conn)
    assert got[2] == "1.50000"  # the column's scale, as PostgreSQL renders it
    assert [None if v is None else Decimal(v) for v in got] == expected


def test_numeric_wider_than_38_digits_is_a_decimal256_in_the_extension_profile(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    values = ["'" + "9" * 45 + "." + "9" * 5 + "'", "'-0.00001'", "NULL"]
    field, got, expected = _round_trip(conn, tmp_path, "numeric(50, 5)", values, "extension")
    assert field.type == pa.decimal256(50, 5)
    assert got == expected


def test_unconstrained_numeric_keeps_the_servers_exact_text(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    values = [
        "'1.50'",
        "'0.0000001'",
        "'123456789012345678901234567890.123456789012345678901234567890'",
        "'-42'",
        "'NaN'",
        "'Infinity'",
        "'-Infinity'",
        "NULL",
    ]
    field, got, expected = _round_trip(conn, tmp_path, "numeric", values)
    assert field.type == pa.string()
    assert got == _server_text(conn)
    assert [None if v is None else Decimal(v) for v in got][:4] == expected[:4]
    assert got[4:] == ["NaN", "Infinity", "-Infinity", None]


def test_nan_in_a_constrained_numeric_is_refused_naming_the_column(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    with pytest.raises(UnsupportedColumnType, match=r"'v'.*NaN.*table=t"):
        _round_trip(conn, tmp_path, "numeric(10, 2)", ["1", "'NaN'"])


def _bits(value: float, fmt: str) -> bytes:
    return struct.pack(fmt, value)


def test_double_precision_is_bit_exact_including_nan_and_infinities(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    values = [
        "0.1 + 0.2",
        "'NaN'",
        "'Infinity'",
        "'-Infinity'",
        "'-0'",
        "5e-324",
        "1.7976931348623157e308",
        "NULL",
    ]
    field, got, expected = _round_trip(conn, tmp_path, "double precision", values)
    assert field.type == pa.float64()
    assert got[-1] is expected[-1] is None
    assert [_bits(v, "<d") for v in got[:-1]] == [_bits(v, "<d") for v in expected[:-1]]
    assert math.isnan(got[1])


def test_real_is_a_float32_with_the_servers_value(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    values = ["1.1", "'NaN'", "'Infinity'", "'-Infinity'", "3.4028235e38", "1e-45", "NULL"]
    field, got, expected = _round_trip(conn, tmp_path, "real", values)
    assert field.type == pa.float32()
    assert got[-1] is expected[-1] is None
    assert [_bits(v, "<f") for v in got[:-1]] == [_bits(v, "<f") for v in expected[:-1]]


def test_booleans_round_trip(conn: pg8000.native.Connection, tmp_path: Path) -> None:
    field, got, expected = _round_trip(conn, tmp_path, "boolean", ["true", "false", "NULL"])
    assert field.type == pa.bool_()
    assert got == expected == [True, False, None]


@pytest.mark.parametrize("column_type", ["text", "varchar(200)", "character varying"])
def test_text_with_csv_and_unicode_hazards_round_trips(
    conn: pg8000.native.Connection, tmp_path: Path, column_type: str
) -> None:
    values = ["'" + s.replace("'", "''") + "'" for s in NASTY_TEXT] + ["NULL"]
    field, got, expected = _round_trip(conn, tmp_path, column_type, values)
    assert field.type == pa.string()
    assert got == expected == [*NASTY_TEXT, None]


def test_null_and_the_empty_string_stay_distinct(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    _, got, expected = _round_trip(conn, tmp_path, "varchar", ["''", "NULL", "''", "NULL"])
    assert got == expected == ["", None, "", None]


def test_char_keeps_its_padding(conn: pg8000.native.Connection, tmp_path: Path) -> None:
    field, got, expected = _round_trip(conn, tmp_path, "char(5)", ["'ab'", "'a,\"b'", "NULL"])
    assert field.type == pa.string()
    assert got == expected == ["ab   ", 'a,"b ', None]


def test_dates_round_trip_across_the_calendar(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    values = ["'2024-02-29'", "'0001-01-01'", "'9999-12-31'", "'1970-01-01'", "NULL"]
    field, got, expected = _round_trip(conn, tmp_path, "date", values)
    assert field.type == pa.date32()
    assert got == expected
    assert got[0] == date(2024, 2, 29)


def test_times_are_fixed_width_text_keeping_microseconds_and_24_00_00(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    values = ["'00:00:00'", "'23:59:59.999999'", "'12:34:56.5'", "'24:00:00'", "NULL"]
    field, got, _ = _round_trip(conn, tmp_path, "time", values, fetch=False)
    assert field.type == pa.string()
    assert got == ["00:00:00.000000", "23:59:59.999999", "12:34:56.500000", "24:00:00.000000", None]
    # the same instants as PostgreSQL's own: its text, read back by the server
    same = conn.run(
        "SELECT bool_and(v = CAST(g AS time)) FROM t JOIN unnest(CAST(:g AS text[]))"
        " WITH ORDINALITY AS u(g, n) ON u.n = t.id",
        g=got,
    )
    assert same == [[True]]


def test_times_keep_microseconds_in_the_extension_profile(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    values = ["'00:00:00'", "'23:59:59.999999'", "'12:34:56.5'", "NULL"]
    field, got, expected = _round_trip(conn, tmp_path, "time", values, "extension")
    assert field.type == pa.time64("us")
    assert got == expected
    assert got[1] == time(23, 59, 59, 999999)


def test_timetz_is_text_with_its_own_offset(conn: pg8000.native.Connection, tmp_path: Path) -> None:
    values = ["'12:34:56.000007+05:30'", "'00:00:00-09:30'", "'24:00:00+00'", "NULL"]
    field, got, _ = _round_trip(conn, tmp_path, "time with time zone", values, fetch=False)
    assert field.type == pa.string()
    assert got == ["12:34:56.000007+05:30", "00:00:00.000000-09:30", "24:00:00.000000+00:00", None]
    same = conn.run(
        "SELECT bool_and(v = CAST(g AS timetz) AND v::text = CAST(g AS timetz)::text) FROM t"
        " JOIN unnest(CAST(:g AS text[])) WITH ORDINALITY AS u(g, n) ON u.n = t.id",
        g=got,
    )
    assert same == [[True]]


def test_an_oid_is_an_int64(conn: pg8000.native.Connection, tmp_path: Path) -> None:
    field, got, expected = _round_trip(conn, tmp_path, "oid", ["4294967295", "0", "NULL"])
    assert field.type == pa.int64()
    assert got == expected == [4294967295, 0, None]


def test_timestamps_keep_microseconds(conn: pg8000.native.Connection, tmp_path: Path) -> None:
    values = [
        "'2022-11-03 14:20:51.563'",
        "'2024-01-01 00:00:00.000001'",
        "'0001-01-01 00:00:00'",
        "'9999-12-31 23:59:59.999999'",
        "NULL",
    ]
    field, got, expected = _round_trip(conn, tmp_path, "timestamp", values)
    assert field.type == pa.timestamp("us")
    assert got == expected
    assert got[1] == datetime(2024, 1, 1, 0, 0, 0, 1)


def test_timestamptz_is_utc_at_microsecond_precision_whatever_the_session_zone(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    conn.run("SET TimeZone = 'Asia/Kathmandu'")  # +05:45: an offset no default would guess
    values = [
        "'2024-06-01 12:00:00.123456+00'",
        "'2024-06-01 12:00:00.000001-07'",
        "'2024-01-01 00:00:00+05:45'",
        "NULL",
    ]
    field, got, expected = _round_trip(conn, tmp_path, "timestamptz", values)
    assert field.type == pa.timestamp("us", tz="UTC")
    assert got == expected
    assert got[0] == datetime(2024, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert got[2] == datetime(2023, 12, 31, 18, 15, tzinfo=UTC)


def test_an_infinite_timestamp_is_refused_naming_the_column(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    with pytest.raises(UnsupportedColumnType, match=r"'v'.*infinity.*table=t"):
        _round_trip(conn, tmp_path, "timestamp", ["'2024-01-01'", "'infinity'"])


def _extracted_as_integers(
    conn: pg8000.native.Connection, tmp_path: Path, column_type: str, values: list[str]
) -> tuple[list[int | None], list[int | None]]:
    """(the Parquet column's integers, the server's own count of days or microseconds
    since 1970), for values Python's datetime cannot hold."""
    conn.run(
        f"CREATE TABLE t (id serial PRIMARY KEY, v {column_type},"
        " last_updated timestamp NOT NULL DEFAULT '2024-01-01')"
    )
    for value in values:
        conn.run(f"INSERT INTO t (v) VALUES ({value})")
    extract_to_parquet(conn, "t", None, END, tmp_path / "t.parquet")
    column = pq.read_table(tmp_path / "t.parquet").column("v")
    storage = pa.int32() if column.type == pa.date32() else pa.int64()
    since_1970 = (
        "v - date '1970-01-01'"
        if column_type == "date"
        else "(extract(epoch FROM v) * 1000000)::int8"
    )
    expected = [row[0] for row in conn.run(f"SELECT {since_1970} FROM t ORDER BY id")]  # nosec
    return column.cast(storage).to_pylist(), expected


@pytest.mark.parametrize("column_type", ["timestamp", "timestamptz"])
def test_timestamps_past_year_9999_are_kept_exactly(
    conn: pg8000.native.Connection, tmp_path: Path, column_type: str
) -> None:
    values = [
        "'10000-01-01 00:00:00'",
        "'12345-06-07 08:09:10.111213'",
        "'294246-12-31 23:59:59.999999'",
        "'2024-01-01 00:00:00.000001'",
        "NULL",
    ]
    got, expected = _extracted_as_integers(conn, tmp_path, column_type, values)
    assert got == expected
    assert got[0] == 253402300800000000  # 10000-01-01T00:00:00Z in microseconds


def test_dates_past_year_9999_are_kept_exactly(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    values = ["'10000-01-01'", "'5874897-12-31'", "'0001-01-01'", "NULL"]
    got, expected = _extracted_as_integers(conn, tmp_path, "date", values)
    assert got == expected


def test_a_timestamp_past_arrows_range_is_refused_naming_the_column(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    # PostgreSQL goes to 294276 AD; Arrow's int64 microseconds since 1970 to 294247 AD
    with pytest.raises(UnsupportedColumnType, match=r"'v'.*294247.*table=t"):
        _round_trip(conn, tmp_path, "timestamp", ["'2024-01-01'", "'294270-01-01'"])


@pytest.mark.parametrize(
    ("column_type", "value"),
    [
        ("date", "'infinity'"),
        ("date", "'0044-03-15 BC'"),
        ("timestamptz", "'-infinity'"),
    ],
)
def test_values_arrow_cannot_hold_are_refused_naming_the_column(
    conn: pg8000.native.Connection, tmp_path: Path, column_type: str, value: str
) -> None:
    with pytest.raises(UnsupportedColumnType, match=r"'v'.*table=t"):
        _round_trip(conn, tmp_path, column_type, ["NULL", value])
    assert not (tmp_path / "t.parquet").exists()


def test_24_00_00_is_refused_in_the_extension_profiles_time64(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    with pytest.raises(UnsupportedColumnType, match=r"'v'.*table=t"):
        _round_trip(conn, tmp_path, "time", ["NULL", "'24:00:00'"], "extension")
    assert not (tmp_path / "t.parquet").exists()


def test_intervals_keep_months_days_and_microseconds_apart(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    values = [
        "'1 year 2 mons 3 days 04:05:06.789012'",
        "'1 day 25:00:00'",  # not the same as 2 days 01:00:00
        "'-1 mons +2 days -00:00:00.000001'",
        "'100000 hours'",
        "'0'",
        "NULL",
    ]
    field, got, _ = _round_trip(conn, tmp_path, "interval", values)
    assert field.type == INTERVAL
    assert got[:2] == [
        {"months": 14, "days": 3, "microseconds": 14_706_789_012},
        {"months": 0, "days": 1, "microseconds": 90_000_000_000},
    ]
    assert got[-1] is None
    texts = [
        None
        if v is None
        else conn.run(
            "SELECT (make_interval(months => CAST(:m AS int), days => CAST(:d AS int))"
            " + CAST(:us AS bigint) * interval '1 microsecond')::text",
            m=v["months"],
            d=v["days"],
            us=v["microseconds"],
        )[0][0]
        for v in got
    ]
    assert texts == _server_text(conn)


_UUIDS = [
    "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
    "gen_random_uuid()",
    "'00000000-0000-0000-0000-000000000000'",
    "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
    "NULL",
]


def test_uuids_are_their_canonical_lower_case_text(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    field, got, expected = _round_trip(conn, tmp_path, "uuid", _UUIDS)
    assert field.type == pa.string()
    assert got == _server_text(conn)
    assert got[0] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert [None if v is None else uuid.UUID(v) for v in got] == expected


def test_uuids_round_trip_as_arrow_uuids_in_the_extension_profile(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    values = _UUIDS
    field, got, expected = _round_trip(conn, tmp_path, "uuid", values, "extension")
    assert field.type == pa.uuid()
    assert got == expected
    assert got[0] == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")


@pytest.mark.parametrize("profile", ["portable", "extension"])
@pytest.mark.parametrize("column_type", ["json", "jsonb"])
def test_json_keeps_the_servers_text(
    conn: pg8000.native.Connection, tmp_path: Path, column_type: str, profile: TypeProfile
) -> None:
    values = [
        """'{"b": 1, "a": [1.50, "x,\\"y\\"", null, true], "n": "\\n"}'""",
        "'\"just a string\"'",
        "'null'",
        "'[]'",
        "NULL",
    ]
    field, got, expected = _round_trip(conn, tmp_path, column_type, values, profile)
    assert field.type == (pa.string() if profile == "portable" else pa.json_())
    assert got == _server_text(conn)
    assert [None if v is None else json.loads(v) for v in got] == expected


def test_bytea_round_trips_every_byte(conn: pg8000.native.Connection, tmp_path: Path) -> None:
    values = [
        "'\\x'::bytea",
        "'\\x00ff0a0d2c22'::bytea",
        "decode(repeat('ab', 50000), 'hex')",
        "NULL",
    ]
    field, got, expected = _round_trip(conn, tmp_path, "bytea", values)
    assert field.type == pa.binary()
    assert got == expected
    assert got[:2] == [b"", b'\x00\xff\n\r,"']


def test_enums_are_their_labels(conn: pg8000.native.Connection, tmp_path: Path) -> None:
    conn.run("CREATE TYPE mood AS ENUM ('sad', 'o''k, \"fine\"', 'happy')")
    field, got, expected = _round_trip(
        conn, tmp_path, "mood", ["'sad'", "'o''k, \"fine\"'", "NULL"]
    )
    assert field.type == pa.string()
    assert field.metadata[b"pg_type"] == b"mood"
    assert got == expected == ["sad", 'o\'k, "fine"', None]


def test_domains_are_their_base_type(conn: pg8000.native.Connection, tmp_path: Path) -> None:
    conn.run("CREATE DOMAIN price AS numeric(6, 2) CHECK (VALUE >= 0)")
    field, got, expected = _round_trip(conn, tmp_path, "price", ["'1.5'", "NULL"])
    assert field.type == pa.decimal128(6, 2)
    assert got == expected == [Decimal("1.50"), None]


def test_integer_arrays_are_lists_keeping_null_elements_and_empty_arrays(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    values = ["'{1,NULL,3}'", "'{}'", "NULL", "'{NULL}'", "ARRAY[2147483647, -2147483648]"]
    field, got, expected = _round_trip(conn, tmp_path, "integer[]", values)
    assert field.type == pa.list_(pa.field("element", pa.int32()))
    assert got == expected == [[1, None, 3], [], None, [None], [2147483647, -2147483648]]


def test_text_arrays_keep_hazardous_elements(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    conn.run("CREATE TABLE source (v text)")
    for text in NASTY_TEXT:
        conn.run("INSERT INTO source VALUES (:v)", v=text)
    field, got, expected = _round_trip(
        conn,
        tmp_path,
        "text[]",
        ["(SELECT array_agg(v) FROM source) || ARRAY[NULL, '']", "ARRAY['{a,b}', 'NULL']"],
    )
    assert field.type == pa.list_(pa.field("element", pa.string()))
    assert got == expected
    assert got[0] == [*NASTY_TEXT, None, ""]


@pytest.mark.parametrize(
    ("column_type", "values"),
    [
        ("numeric(10, 2)[]", ["'{1.5,NULL,-2}'"]),
        ("numeric[]", ["'{NaN,1.50,Infinity}'"]),
        ("double precision[]", ["'{NaN,Infinity,0.1}'"]),
        ("boolean[]", ["'{t,f,NULL}'"]),
        ("date[]", ["'{2024-02-29,NULL}'"]),
        ("timestamp[]", ["ARRAY['2024-01-01 00:00:00.000001'::timestamp]"]),
        ("timestamptz[]", ["ARRAY['2024-01-01 00:00:00.5+03'::timestamptz]"]),
        ("uuid[]", ["ARRAY[gen_random_uuid(), NULL]"]),
        ("time[]", ["ARRAY['24:00'::time, '00:00:01.5'::time, NULL]"]),
        ("bytea[]", ["ARRAY['\\x00ff'::bytea, '\\x'::bytea, NULL]"]),
    ],
)
def test_arrays_of_other_types_use_the_element_types_mapping(
    conn: pg8000.native.Connection, tmp_path: Path, column_type: str, values: list[str]
) -> None:
    fetch = column_type != "time[]"  # pg8000 cannot parse 24:00:00
    field, got, expected = _round_trip(conn, tmp_path, column_type, [*values, "NULL"], fetch=fetch)
    assert isinstance(field.type, pa.ListType)
    if column_type == "numeric[]":
        assert got == [["NaN", "1.50", "Infinity"], None]
    elif column_type == "uuid[]":
        assert got == [[str(expected[0][0]), None], None]
    elif column_type == "time[]":
        assert got == [["24:00:00.000000", "00:00:01.500000", None], None]
    elif column_type == "double precision[]":
        assert math.isnan(got[0][0])
        assert got[0][1:] == expected[0][1:]
    else:
        assert got == expected


def test_interval_and_enum_arrays_round_trip(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    conn.run("CREATE TYPE mood AS ENUM ('sad', 'happy')")
    conn.run(
        "CREATE TABLE t (id int, moods mood[], waits interval[],"
        " last_updated timestamp NOT NULL DEFAULT '2024-01-01')"
    )
    conn.run("INSERT INTO t VALUES (1, '{sad,NULL,happy}', ARRAY['1 day 25:00'::interval, NULL])")
    extract_to_parquet(conn, "t", None, END, tmp_path / "t.parquet")
    row = pq.read_table(tmp_path / "t.parquet").to_pylist()[0]
    assert row["moods"] == ["sad", None, "happy"]
    assert row["waits"] == [{"months": 0, "days": 1, "microseconds": 90_000_000_000}, None]


def test_a_multidimensional_array_is_refused_naming_the_column(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    with pytest.raises(UnsupportedColumnType, match=r"'v'.*multi-dimensional.*table=t"):
        _round_trip(conn, tmp_path, "integer[]", ["'{1,2}'", "'{{1,2},{3,4}}'"])


@pytest.mark.parametrize("column_type", ["money", "point", "int4range", "bit(3)", "tsvector"])
def test_types_without_a_faithful_mapping_are_refused(
    conn: pg8000.native.Connection, tmp_path: Path, column_type: str
) -> None:
    with pytest.raises(UnsupportedColumnType, match=r"'v'.*table=t"):
        _round_trip(conn, tmp_path, column_type, [])


@pytest.mark.parametrize(
    "column_type", ["numeric(10, 2)", "numeric(18, 9)", "numeric(18, 0)", "numeric(5, 5)"]
)
def test_every_constrained_numeric_value_is_exact(
    conn: pg8000.native.Connection, tmp_path: Path, column_type: str
) -> None:
    # GIVEN values of every magnitude and digit count the type holds (few digits: read as
    # one integer; many: digit by digit), signs, zero and NULL
    precision, scale = (int(x) for x in column_type[8:-1].split(","))
    conn.run(
        f"CREATE TABLE t (id serial PRIMARY KEY, v {column_type},"
        " last_updated timestamp NOT NULL DEFAULT '2024-01-01')"
    )
    conn.run(
        "INSERT INTO t (v) SELECT CASE WHEN g % 97 = 0 THEN NULL ELSE"
        " round(((abs(hashint8(g)) % 2000000) / 1000000.0 - 1)"
        " * ten ^ ((abs(hashint8(g + 1)) % (CAST(:p AS int) + 1)) - CAST(:s AS int))"
        " * (1 - ten ^ (-CAST(:s AS int) - 3)), CAST(:s AS int)) END"
        " FROM CAST(10 AS numeric) AS ten, generate_series(1, 5000) AS g",
        p=precision,
        s=scale,
    )
    path = tmp_path / "t.parquet"
    extract_to_parquet(conn, "t", None, END, path)
    got = pq.read_table(path).sort_by("id").column("v").to_pylist()
    # THEN each is the server's own value, digit for digit
    assert got == [None if t is None else Decimal(t) for t in _server_text(conn)]
    assert len({v for v in got if v is not None}) > 1000


def test_fixed_width_columns_are_exact_in_chunks_with_and_without_nulls(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    # GIVEN consecutive fixed-width columns of every kind over many chunks, NULLs in a
    # few rows only (their chunk is walked field by field, the others a row at a time)
    conn.run(
        "CREATE TABLE t (id int PRIMARY KEY, a smallint, b bigint, c real, d double precision,"
        " e boolean, f date, g timestamptz, h oid, i text, j int,"
        " last_updated timestamp NOT NULL)"
    )
    conn.run(
        "INSERT INTO t SELECT n, n % 30000, n * CAST(1000003 AS bigint), n / 7.0, n / 3.0,"
        " n % 3 = 0,"
        " date '2000-01-01' + n, timestamptz '2024-01-01 UTC' + n * interval '1.5 s', n,"
        " 'x' || n, -n, timestamp '2024-01-01' + n * interval '1 ms'"
        " FROM generate_series(1, 60000) AS n"
    )
    conn.run(
        "UPDATE t SET a = NULL, c = NULL, e = NULL, g = NULL, j = NULL"
        " WHERE id BETWEEN 40000 AND 40010"
    )
    path = tmp_path / "t.parquet"
    extract_to_parquet(conn, "t", None, END, path)
    got = pq.read_table(path).sort_by("id")
    names = ["id", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
    # THEN every value is the server's
    exact = ", ".join("CAST(c AS float8)" if name == "c" else name for name in names)
    expected = conn.run(f"SELECT {exact} FROM t ORDER BY id")  # float4 widened exactly
    columns = [got.column(name).to_pylist() for name in names]
    assert [list(row) for row in zip(*columns, strict=True)] == expected


def test_a_wide_numeric_last_column_whose_last_row_is_null_is_extracted(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    # GIVEN numeric(18, 0) as the table's last column, a five-digit-group value, then a NULL
    # in the last row: the NULL sits at the very end of the COPY's buffer
    conn.run(
        "CREATE TABLE t (id serial PRIMARY KEY, last_updated timestamp NOT NULL"
        " DEFAULT '2024-01-01', v numeric(18, 0))"
    )
    conn.run("INSERT INTO t (v) VALUES (123456789012345678), (NULL)")
    path = tmp_path / "t.parquet"
    # WHEN it is extracted THEN both rows are there, exact (it used to fail: IndexError)
    extract_to_parquet(conn, "t", None, END, path)
    got = pq.read_table(path).sort_by("id").column("v").to_pylist()
    assert got == [Decimal(123456789012345678), None]
