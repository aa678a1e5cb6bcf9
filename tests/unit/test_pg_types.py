"""The type mapping, without a database: catalog facts, plans and pg8000 values."""

from __future__ import annotations

import struct
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from totes_ingest.errors import UnsupportedColumnType
from totes_ingest.pg_binary import PADDING, Values, gathered
from totes_ingest.pg_types import (
    INTERVAL,
    PG_TYPE_KEY,
    CatalogType,
    Column,
    Profile,
    conform,
    map_type,
    numeric_type,
    plan,
)

pytestmark = pytest.mark.unit


def _typmod(precision: int, scale: int) -> int:
    """What PostgreSQL stores in atttypmod for numeric(precision, scale)."""
    return ((precision << 16) | (scale & 0x7FF)) + 4


def test_unconstrained_numeric_is_exact_text() -> None:
    assert numeric_type(-1) == pa.string()


def test_numeric_up_to_38_digits_is_a_decimal128_of_the_same_shape() -> None:
    assert numeric_type(_typmod(10, 2)) == pa.decimal128(10, 2)
    assert numeric_type(_typmod(38, 0)) == pa.decimal128(38, 0)


def test_numeric_of_more_than_38_digits_is_exact_text_by_default() -> None:
    # decimal256 is read by neither Polars nor Spark, and DuckDB makes it a DOUBLE
    assert numeric_type(_typmod(39, 4)) == pa.string()
    assert numeric_type(_typmod(76, 76)) == pa.string()


def test_numeric_of_39_to_76_digits_is_a_decimal256_in_the_extension_profile() -> None:
    assert numeric_type(_typmod(39, 4), "extension") == pa.decimal256(39, 4)
    assert numeric_type(_typmod(76, 76), "extension") == pa.decimal256(76, 76)


def test_numeric_beyond_76_digits_is_exact_text() -> None:
    assert numeric_type(_typmod(1000, 10)) == pa.string()


def test_a_negative_scale_widens_the_precision_to_whole_numbers() -> None:
    # numeric(5, -2) holds up to 9999900: seven digits, no fraction
    assert numeric_type(_typmod(5, -2)) == pa.decimal128(7, 0)


def test_a_scale_above_the_precision_becomes_the_precision() -> None:
    # numeric(3, 5) holds up to 0.00999: five fractional digits
    assert numeric_type(_typmod(3, 5)) == pa.decimal128(5, 5)


def test_a_columns_field_carries_its_postgresql_type() -> None:
    field = Column("price", "numeric(10,2)", pa.decimal128(10, 2), "numeric").field
    assert field.metadata == {PG_TYPE_KEY: b"numeric(10,2)"}
    assert field.nullable


# --- map_type: catalog facts to Arrow types, no database needed ---

_INT4, _TEXT, _NUMERIC, _INT4_ARRAY, _MONEY, _MOOD, _POSITIVE, _NESTED, _WIDE, _WIDES = range(1, 11)
_UUID, _JSON, _JSONB, _TIME, _TIMETZ, _OID, _UUID_ARRAY = range(11, 18)
_CATALOG = {
    _INT4: CatalogType("int4", "pg_catalog", "b", "N", 0, 0, -1),
    _TEXT: CatalogType("text", "pg_catalog", "b", "S", 0, 0, -1),
    _NUMERIC: CatalogType("numeric", "pg_catalog", "b", "N", 0, 0, -1),
    _INT4_ARRAY: CatalogType("_int4", "pg_catalog", "b", "A", _INT4, 0, -1),
    _MONEY: CatalogType("money", "pg_catalog", "b", "N", 0, 0, -1),
    _MOOD: CatalogType("mood", "public", "e", "E", 0, 0, -1),
    _POSITIVE: CatalogType("price", "public", "d", "N", 0, _NUMERIC, _typmod(10, 2)),
    _NESTED: CatalogType("_price", "public", "b", "A", _POSITIVE, 0, -1),
    _WIDE: CatalogType("amount", "public", "d", "N", 0, _NUMERIC, _typmod(30, 2)),
    _WIDES: CatalogType("_amount", "public", "b", "A", _WIDE, 0, -1),
    _UUID: CatalogType("uuid", "pg_catalog", "b", "U", 0, 0, -1),
    _JSON: CatalogType("json", "pg_catalog", "b", "U", 0, 0, -1),
    _JSONB: CatalogType("jsonb", "pg_catalog", "b", "U", 0, 0, -1),
    _TIME: CatalogType("time", "pg_catalog", "b", "D", 0, 0, -1),
    _TIMETZ: CatalogType("timetz", "pg_catalog", "b", "D", 0, 0, -1),
    _OID: CatalogType("oid", "pg_catalog", "b", "N", 0, 0, -1),
    _UUID_ARRAY: CatalogType("_uuid", "pg_catalog", "b", "A", _UUID, 0, -1),
}


def _mapped(
    oid: int, pg_type: str = "t", typmod: int = -1, profile: Profile = "portable"
) -> Column:
    return map_type("v", pg_type, oid, typmod, _CATALOG.__getitem__, profile)


@pytest.mark.parametrize(
    ("oid", "portable", "extension"),
    [
        (_UUID, pa.string(), pa.uuid()),
        (_JSON, pa.string(), pa.json_()),
        (_JSONB, pa.string(), pa.json_()),
        (_TIME, pa.string(), pa.time64("us")),
        (_OID, pa.int64(), pa.uint32()),
        (_UUID_ARRAY, pa.list_(pa.field("element", pa.string())), None),
    ],
)
def test_the_portable_profile_is_the_default_and_the_extension_types_are_opt_in(
    oid: int, portable: pa.DataType, extension: pa.DataType | None
) -> None:
    assert _mapped(oid).arrow_type == portable
    if extension is not None:
        assert _mapped(oid, profile="extension").arrow_type == extension


def test_timetz_is_text_in_the_portable_profile_and_refused_in_the_extension_one() -> None:
    assert _mapped(_TIMETZ, "time with time zone").arrow_type == pa.string()
    with pytest.raises(UnsupportedColumnType, match="time with time zone"):
        _mapped(_TIMETZ, "time with time zone", profile="extension")


def test_an_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="profile"):
        _mapped(_INT4, profile="fancy")  # type: ignore[arg-type]


def test_a_base_type_maps_through_the_table() -> None:
    column = _mapped(_INT4, "integer")
    assert (column.arrow_type, column.kind, column.field.metadata) == (
        pa.int32(),
        "fixed",
        {PG_TYPE_KEY: b"integer"},
    )


def test_a_domain_maps_as_its_base_type_with_the_domains_typmod() -> None:
    assert _mapped(_POSITIVE).arrow_type == pa.decimal128(10, 2)


def test_an_enum_is_its_label() -> None:
    assert _mapped(_MOOD).arrow_type == pa.string()


def test_an_array_is_a_list_of_its_elements_mapping() -> None:
    column = _mapped(_INT4_ARRAY, "integer[]")
    assert column.arrow_type == pa.list_(pa.field("element", pa.int32()))
    assert column.element is not None
    assert column.element.arrow_type == pa.int32()
    assert column.kind == "array"


def test_an_array_of_a_domain_over_numeric_keeps_the_domains_typmod() -> None:
    assert _mapped(_NESTED).arrow_type == pa.list_(pa.field("element", pa.decimal128(10, 2)))


def test_a_type_without_a_faithful_mapping_is_refused_naming_the_column() -> None:
    with pytest.raises(UnsupportedColumnType, match=r"'v' has type money"):
        _mapped(_MONEY, "money")


# --- plan: how the extract selects and decodes a column (binary COPY values) ---


def _values(*encoded: bytes | None) -> Values:
    """Values as a binary COPY sends them: each a length (-1: NULL) and its bytes."""
    data, positions, lengths = b"", [], []
    for value in encoded:
        positions.append(len(data) + 4)
        lengths.append(-1 if value is None else len(value))
        data += struct.pack(">i", lengths[-1]) + (value or b"")
    buffer = np.frombuffer(data + PADDING, dtype=np.uint8)
    return Values(buffer, np.array(positions, dtype=np.int64), np.array(lengths, np.int32))


def test_an_integer_is_selected_as_it_is_and_decoded_from_big_endian() -> None:
    planned = plan(_mapped(_INT4), "x")
    assert planned.expr == "x"
    decoded = planned.decode(_values(struct.pack(">i", -7), None, struct.pack(">i", 2**31 - 1)))
    assert decoded.to_pylist() == [-7, None, 2**31 - 1]


def _numeric(weight: int, sign: int, scale: int, *digits: int) -> bytes:
    """PostgreSQL's binary numeric: base-10000 digits, the first at 10000**weight."""
    return struct.pack(f">hhHh{len(digits)}h", len(digits), weight, sign, scale, *digits)


def test_a_numeric_of_up_to_18_digits_is_decoded_from_its_binary_form() -> None:
    planned = plan(_mapped(_POSITIVE), "x")
    assert planned.expr == "x"
    values = _values(
        _numeric(0, 0, 2, 1, 5000),  # 1.50
        _numeric(1, 0x4000, 2, 1, 2345, 6700),  # -12345.67
        _numeric(0, 0, 0),  # 0
        None,
    )
    expected = [Decimal("1.50"), Decimal("-12345.67"), Decimal("0.00"), None]
    assert planned.decode(values).to_pylist() == expected


def test_a_wide_numeric_column_ending_in_a_null_is_decoded_digit_for_digit() -> None:
    # GIVEN numeric(18, 0) values of up to five base-10000 digits (18 bytes), the last a
    # NULL at the buffer's very end (reading 18 bytes there would pass the padding)
    planned = plan(_mapped(_NUMERIC, "numeric", _typmod(18, 0)), "x")
    values = _values(
        _numeric(4, 0, 0, 12, 3456, 7890, 1234, 5678),  # 123456789012345678
        _numeric(0, 0x4000, 0, 7),  # -7
        _numeric(0, 0, 0),  # 0: 8 bytes, the shortest
        None,
    )
    # THEN each value is exact
    expected = [Decimal(123456789012345678), Decimal(-7), Decimal(0), None]
    assert planned.decode(values).to_pylist() == expected
    # AND a short value last: its row reads a padded copy, to the same values
    short_last = _values(_numeric(4, 0, 0, 12, 3456, 7890, 1234, 5678), None, _numeric(0, 0, 0))
    assert gathered(short_last).rows is not None
    assert planned.decode(short_last).to_pylist() == [expected[0], None, Decimal(0)]


def test_nan_in_a_numeric_of_up_to_18_digits_is_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        plan(_mapped(_POSITIVE), "x").decode(_values(_numeric(0, 0xC000, 0)))


def test_a_wider_numeric_is_selected_as_its_exact_text() -> None:
    planned = plan(_mapped(_WIDE), "x")
    assert planned.expr == "(x)::text"
    assert planned.decode(_values(b"1.50", None)).to_pylist() == [Decimal("1.50"), None]


def test_an_array_of_a_type_selected_as_text_is_selected_as_a_text_array() -> None:
    assert plan(_mapped(_WIDES), "x").expr == "(x)::text[]"
    assert plan(_mapped(_NESTED), "x").expr == "x"


def test_a_uuid_is_decoded_from_its_16_bytes_to_its_canonical_text() -> None:
    raw = bytes.fromhex("a0eebc999c0b4ef8bb6d6bb9bd380a11")
    decoded = plan(_mapped(_UUID), "x").decode(_values(raw, None, bytes(16)))
    assert decoded.type == pa.string()
    expected = [
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        None,
        "00000000-0000-0000-0000-000000000000",
    ]
    assert decoded.to_pylist() == expected


def test_a_time_is_fixed_width_text_with_24_00_00_kept() -> None:
    planned = plan(_mapped(_TIME), "x")
    assert planned.expr == "x"  # decoded from its binary form, not selected as text
    micros = [0, 86_399_999_999, 86_400_000_000, 45_296_000_007]
    decoded = planned.decode(_values(*(struct.pack(">q", m) for m in micros), None))
    expected = ["00:00:00.000000", "23:59:59.999999", "24:00:00.000000", "12:34:56.000007"]
    assert decoded.to_pylist() == [*expected, None]


def test_a_timetz_is_text_with_its_own_offset() -> None:
    # the wire holds the time and the offset in seconds *west* of UTC
    values = _values(
        struct.pack(">qi", 45_296_000_007, -19_800),  # +05:30
        struct.pack(">qi", 0, 3_600 * 9 + 1_800),  # -09:30
        struct.pack(">qi", 86_400_000_000, 0),
        None,
    )
    decoded = plan(_mapped(_TIMETZ, "time with time zone"), "x").decode(values)
    expected = ["12:34:56.000007+05:30", "00:00:00.000000-09:30", "24:00:00.000000+00:00", None]
    assert decoded.to_pylist() == expected


def test_a_timetz_whose_offset_has_seconds_is_refused() -> None:
    values = _values(struct.pack(">qi", 0, -(3_600 + 15)))
    with pytest.raises(ValueError, match="offset with seconds"):
        plan(_mapped(_TIMETZ, "time with time zone"), "x").decode(values)


def test_an_oid_is_widened_to_int64_every_engine_reads() -> None:
    decoded = plan(_mapped(_OID), "x").decode(_values(struct.pack(">I", 2**32 - 1), None))
    assert decoded.type == pa.int64()
    assert decoded.to_pylist() == [2**32 - 1, None]


def test_an_interval_is_decoded_into_its_three_fields() -> None:
    column = Column("v", "interval", INTERVAL, "interval")
    decoded = plan(column, "x").decode(_values(struct.pack(">qii", 5, 3, 14), None))
    assert decoded.to_pylist() == [{"months": 14, "days": 3, "microseconds": 5}, None]


def test_a_timestamp_past_year_9999_is_decoded_exactly() -> None:
    column = Column("v", "timestamp", pa.timestamp("us"), "timestamp")
    # 10000-01-01 in PostgreSQL's microseconds since 2000-01-01
    micros = 253402300800000000 - 946684800000000
    decoded = plan(column, "x").decode(_values(struct.pack(">q", micros)))
    assert decoded.cast(pa.int64()).to_pylist() == [253402300800000000]


def test_an_infinite_timestamp_is_refused() -> None:
    column = Column("v", "timestamp", pa.timestamp("us"), "timestamp")
    with pytest.raises(ValueError, match="infinity"):
        plan(column, "x").decode(_values(struct.pack(">q", 2**63 - 1)))


# --- conform: pg8000's Python values in the mapping's form ---


def test_an_unconstrained_numeric_value_is_conformed_to_its_exact_text() -> None:
    schema = pa.schema([Column("v", "numeric", pa.string(), "numeric").field])
    assert conform([{"v": Decimal("1.50")}, {"v": None}], schema) == [{"v": "1.50"}, {"v": None}]


def test_a_nan_in_a_decimal_column_is_refused() -> None:
    schema = pa.schema([Column("v", "numeric(10,2)", pa.decimal128(10, 2), "numeric").field])
    with pytest.raises(UnsupportedColumnType, match="'v'"):
        conform([{"v": Decimal("NaN")}], schema)
