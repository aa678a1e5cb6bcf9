"""parquet_data: the seed's small-result path shares the extract's type mapping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pg8000.native
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from totes_ingest.catalog import table_schema
from totes_ingest.errors import UnsupportedColumnType
from totes_ingest.extract import extract_to_parquet
from totes_ingest.parquet_data import parquet_data
from totes_ingest.query_db import query_db

pytestmark = pytest.mark.integration

END = "2030-01-01 00:00:00"
# A ToteSys payment row's shape plus one column of each type pg8000 converts on its way.
PAYMENT = """
CREATE TABLE payment (
    payment_id serial PRIMARY KEY,
    transaction_id int NOT NULL,
    payment_amount numeric NOT NULL,
    unit_price numeric(10, 2),
    paid boolean NOT NULL,
    payment_date varchar NOT NULL,
    note text,
    ratio double precision,
    ref uuid,
    tags text[],
    prices numeric[],
    extra jsonb,
    wait interval,
    blob bytea,
    paid_at timestamptz,
    opens time,
    opens_tz timetz,
    created_at timestamp NOT NULL DEFAULT '2022-11-03 14:20:51.563',
    last_updated timestamp NOT NULL DEFAULT '2022-11-03 14:20:51.563'
)
"""
ROWS = [
    "(1, 552548.62, 2.50, true, '2022-11-09', 'Hartmann, Franecki and Ratke', 0.1,"
    " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{a,\"b,c\",NULL,\"\"}', '{1.50,NaN}',"
    " '{\"k\": [1, null]}', '3 days 04:00:00', '\\x00ff', '2024-01-01 00:00:00.000001+02',"
    " '09:30:00.5', '09:30:00.5+05:30')",
    "(2, 'NaN', NULL, false, '2022-11-10', '', NULL, NULL, '{}', NULL, NULL, NULL, NULL, NULL,"
    " NULL, NULL)",
    "(3, '0.0000001', 1.00, true, '2022-11-11', NULL, 'Infinity', NULL, NULL, NULL, 'null',"
    " '1 mon', '\\x', NULL, '23:59:59', '23:59:59-09')",
]
COLUMNS = (
    "transaction_id, payment_amount, unit_price, paid, payment_date, note, ratio, ref,"
    " tags, prices, extra, wait, blob, paid_at, opens, opens_tz"
)


def _payments(conn: pg8000.native.Connection) -> None:
    conn.run(PAYMENT)
    for row in ROWS:
        conn.run(f"INSERT INTO payment ({COLUMNS}) VALUES {row}")


def _small_path(conn: pg8000.native.Connection, schema: pa.Schema | None) -> pa.Table:
    result = query_db("SELECT * FROM payment ORDER BY payment_id", lambda: conn, lambda _: None)
    return pq.read_table(parquet_data(result, schema))


def _streamed(conn: pg8000.native.Connection, tmp_path: Path) -> pa.Table:
    extract_to_parquet(conn, "payment", None, END, tmp_path / "payment.parquet")
    return pq.read_table(tmp_path / "payment.parquet")


def test_with_the_catalog_schema_both_paths_write_the_same_schema(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    _payments(conn)
    small = _small_path(conn, table_schema(conn, "payment"))
    assert small.schema == _streamed(conn, tmp_path).schema
    assert small.schema.equals(table_schema(conn, "payment"), check_metadata=True)


def test_with_the_catalog_schema_both_paths_write_the_same_values(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    _payments(conn)
    small = _small_path(conn, table_schema(conn, "payment")).to_pylist()
    streamed = _streamed(conn, tmp_path).to_pylist()
    # json is re-serialised by pg8000's round trip, so it is compared parsed
    assert [{**r, "extra": None} for r in small] == [{**r, "extra": None} for r in streamed]
    assert [_parsed(r["extra"]) for r in small] == [_parsed(r["extra"]) for r in streamed]


def _parsed(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def test_an_unconstrained_numeric_is_the_same_exact_text_on_both_paths(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    _payments(conn)
    small = _small_path(conn, table_schema(conn, "payment"))
    assert small.column("payment_amount").to_pylist() == ["552548.62", "NaN", "0.0000001"]
    assert small.column("prices").to_pylist()[0] == ["1.50", "NaN"]


def test_an_all_null_column_keeps_its_catalog_type(conn: pg8000.native.Connection) -> None:
    _payments(conn)
    conn.run("UPDATE payment SET ref = NULL, unit_price = NULL")
    small = _small_path(conn, table_schema(conn, "payment"))
    assert small.schema.field("ref").type == pa.string()
    assert small.schema.field("unit_price").type == pa.decimal128(10, 2)


def test_an_empty_result_is_a_typed_zero_row_file(conn: pg8000.native.Connection) -> None:
    _payments(conn)
    schema = table_schema(conn, "payment")
    table = pq.read_table(parquet_data({"response": []}, schema))
    assert table.num_rows == 0
    assert table.schema == schema


def test_nan_in_a_decimal_column_is_refused(conn: pg8000.native.Connection) -> None:
    conn.run("CREATE TABLE price (p numeric(10, 2))")
    conn.run("INSERT INTO price VALUES ('NaN')")
    rows: dict[str, Any] = query_db("SELECT p FROM price", lambda: conn, lambda _: None)
    with pytest.raises(UnsupportedColumnType, match="'p'"):
        parquet_data(rows, table_schema(conn, "price"))


def test_without_a_schema_the_seed_behaviour_infers_types() -> None:
    table = pq.read_table(parquet_data({"response": [{"id": 1, "name": "a"}]}))
    assert table.schema == pa.schema([("id", pa.int64()), ("name", pa.string())])
    assert table.to_pylist() == [{"id": 1, "name": "a"}]
