"""The type mapping, without a database: catalog facts, plans and pg8000 values."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa
import pytest

from totes_ingest.errors import UnsupportedColumnType
from totes_ingest.pg_types import (
    INTERVAL,
    PG_TYPE_KEY,
    CatalogType,
    Column,
    Plan,
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


def test_numeric_of_39_to_76_digits_is_a_decimal256() -> None:
    assert numeric_type(_typmod(39, 4)) == pa.decimal256(39, 4)
    assert numeric_type(_typmod(76, 76)) == pa.decimal256(76, 76)


def test_numeric_beyond_76_digits_is_exact_text() -> None:
    assert numeric_type(_typmod(1000, 10)) == pa.string()


def test_a_negative_scale_widens_the_precision_to_whole_numbers() -> None:
    # numeric(5, -2) holds up to 9999900: seven digits, no fraction
    assert numeric_type(_typmod(5, -2)) == pa.decimal128(7, 0)


def test_a_scale_above_the_precision_becomes_the_precision() -> None:
    # numeric(3, 5) holds up to 0.00999: five fractional digits
    assert numeric_type(_typmod(3, 5)) == pa.decimal128(5, 5)


def test_a_columns_field_carries_its_postgresql_type() -> None:
    field = Column("price", "numeric(10,2)", pa.decimal128(10, 2), "plain").field
    assert field.metadata == {PG_TYPE_KEY: b"numeric(10,2)"}
    assert field.nullable


# --- map_type: catalog facts to Arrow types, no database needed ---

_INT4, _TEXT, _NUMERIC, _INT4_ARRAY, _MONEY, _MOOD, _POSITIVE, _NESTED = range(1, 9)
_CATALOG = {
    _INT4: CatalogType("int4", "pg_catalog", "b", "N", 0, 0, -1),
    _TEXT: CatalogType("text", "pg_catalog", "b", "S", 0, 0, -1),
    _NUMERIC: CatalogType("numeric", "pg_catalog", "b", "N", 0, 0, -1),
    _INT4_ARRAY: CatalogType("_int4", "pg_catalog", "b", "A", _INT4, 0, -1),
    _MONEY: CatalogType("money", "pg_catalog", "b", "N", 0, 0, -1),
    _MOOD: CatalogType("mood", "public", "e", "E", 0, 0, -1),
    _POSITIVE: CatalogType("price", "public", "d", "N", 0, _NUMERIC, _typmod(10, 2)),
    _NESTED: CatalogType("_price", "public", "b", "A", _POSITIVE, 0, -1),
}


def _mapped(oid: int, pg_type: str = "t", typmod: int = -1) -> Column:
    return map_type("v", pg_type, oid, typmod, _CATALOG.__getitem__)


def test_a_base_type_maps_through_the_table() -> None:
    column = _mapped(_INT4, "integer")
    assert (column.arrow_type, column.kind, column.field.metadata) == (
        pa.int32(),
        "plain",
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


# --- plan: how the extract selects, parses and finishes a column ---


def test_a_plain_column_is_selected_as_it_is_and_needs_no_finishing() -> None:
    column = _mapped(_INT4)
    assert plan(column, "x") == Plan(column, ("x",), (pa.int32(),), None)


def test_an_interval_is_selected_as_its_three_fields() -> None:
    column = Column("v", "interval", INTERVAL, "interval")
    planned = plan(column, "x")
    assert planned.csv_types == (pa.int32(), pa.int32(), pa.int64())
    months, days, micros = (
        pa.array([v], t) for v, t in zip((14, 3, 5), planned.csv_types, strict=True)
    )
    assert planned.finish is not None
    assert planned.finish([months, days, micros]).to_pylist() == [
        {"months": 14, "days": 3, "microseconds": 5}
    ]


def test_bytea_hex_text_is_finished_into_bytes() -> None:
    column = Column("v", "bytea", pa.binary(), "bytea")
    planned = plan(column, "x")
    assert planned.finish is not None
    finished = planned.finish([pa.array(["\\x00ff", None, "\\x"])])
    assert finished.to_pylist() == [b"\x00\xff", None, b""]


# --- conform: pg8000's Python values in the mapping's form ---


def test_an_unconstrained_numeric_value_is_conformed_to_its_exact_text() -> None:
    schema = pa.schema([Column("v", "numeric", pa.string(), "plain").field])
    assert conform([{"v": Decimal("1.50")}, {"v": None}], schema) == [{"v": "1.50"}, {"v": None}]


def test_a_nan_in_a_decimal_column_is_refused() -> None:
    schema = pa.schema([Column("v", "numeric(10,2)", pa.decimal128(10, 2), "plain").field])
    with pytest.raises(UnsupportedColumnType, match="'v'"):
        conform([{"v": Decimal("NaN")}], schema)
