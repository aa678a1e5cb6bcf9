"""numeric typmods to Arrow decimals: exact, or exact text when no decimal fits."""

from __future__ import annotations

import pyarrow as pa
import pytest

from totes_ingest.pg_types import PG_TYPE_KEY, Column, numeric_type

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
