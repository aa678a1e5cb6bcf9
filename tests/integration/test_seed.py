"""``seed``: realistic, deterministic, FK-consistent ToteSys data, made inside PostgreSQL."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pg8000.native
import pytest

from totes_ingest.local.seed import BASE_TIME, END_TIME, GROWING, SeedError, seed
from totes_ingest.local.totesys import TABLES, create_schema

pytestmark = pytest.mark.integration

SMALL = 0.05  # 500 sales orders: enough variety, fast

REFERENCE_SIZES = {
    "currency": 3,
    "department": 8,
    "address": 30,
    "staff": 20,
    "counterparty": 20,
    "payment_type": 4,
}


def fingerprint(conn: pg8000.native.Connection) -> dict[str, str]:
    """A digest of every row of every table, in id order."""
    digest = "SELECT md5(string_agg(CAST(t AS text), '|' ORDER BY t.{0}_id)) FROM \"{0}\" AS t"
    return {table: conn.run(digest.format(table))[0][0] for table in TABLES}


def schema_objects(conn: pg8000.native.Connection) -> set[str]:
    """Every constraint and index definition of the current schema."""
    constraints = conn.run(
        "SELECT conrelid::regclass::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = current_schema()::regnamespace"
    )
    indexes = conn.run("SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema()")
    return {row[0] for row in constraints + indexes}


def scalar(conn: pg8000.native.Connection, sql: str) -> Any:
    return conn.run(sql)[0][0]


def test_seed_creates_the_schema_with_typical_sizes_at_scale_1(
    conn: pg8000.native.Connection,
) -> None:
    counts = seed(conn)

    assert counts == {
        **REFERENCE_SIZES,
        "design": 500,
        "sales_order": 10_000,
        "purchase_order": 4_000,
        "transaction": 14_000,
        "payment": 14_000,
    }
    assert list(counts) == list(TABLES)


def test_seed_is_deterministic(conn: pg8000.native.Connection) -> None:
    seed(conn, SMALL)
    first = fingerprint(conn)

    seed(conn, SMALL, force=True)

    assert fingerprint(conn) == first


def test_scale_grows_only_the_growing_tables(conn: pg8000.native.Connection) -> None:
    small = seed(conn, SMALL)
    double = seed(conn, 2 * SMALL, force=True)

    for table in TABLES:
        if table in REFERENCE_SIZES:
            assert double[table] == small[table] == REFERENCE_SIZES[table]
        else:
            assert double[table] == 2 * small[table], table
    assert small["sales_order"] == round(GROWING["sales_order"] * SMALL)


def test_foreign_keys_are_in_place_and_the_business_rules_hold(
    conn: pg8000.native.Connection,
) -> None:
    create_schema(conn)
    schema = schema_objects(conn)

    seed(conn, SMALL)

    # Foreign keys and indexes were dropped for the bulk load and re-created as they were;
    # re-adding the foreign keys validated every row.
    assert schema_objects(conn) == schema
    assert any("FOREIGN KEY" in definition for definition in schema)
    # One transaction per order, of the order's kind.
    assert (
        scalar(
            conn,
            """
        SELECT count(*) FROM transaction
        WHERE NOT ((transaction_type = 'SALE' AND sales_order_id IS NOT NULL
                    AND purchase_order_id IS NULL)
                OR (transaction_type = 'PURCHASE' AND purchase_order_id IS NOT NULL
                    AND sales_order_id IS NULL))""",
        )
        == 0
    )
    assert scalar(conn, "SELECT count(DISTINCT sales_order_id) FROM transaction") == scalar(
        conn, "SELECT count(*) FROM sales_order"
    )
    # One payment per transaction, for the order's amount, from the order's counterparty.
    assert (
        scalar(
            conn,
            """
        SELECT count(*) FROM payment AS p
        JOIN transaction AS t USING (transaction_id)
        LEFT JOIN sales_order AS s USING (sales_order_id)
        LEFT JOIN purchase_order AS o USING (purchase_order_id)
        WHERE p.payment_amount <> coalesce(s.units_sold * s.unit_price,
                                           o.item_quantity * o.item_unit_price)
           OR p.counterparty_id <> coalesce(s.counterparty_id, o.counterparty_id)
           OR p.payment_type_id NOT IN (CASE WHEN t.transaction_type = 'SALE' THEN 1 ELSE 3 END,
                                        CASE WHEN t.transaction_type = 'SALE' THEN 2 ELSE 4 END)
        """,
        )
        == 0
    )
    assert scalar(conn, "SELECT count(DISTINCT transaction_id) FROM payment") == scalar(
        conn, "SELECT count(*) FROM transaction"
    )


def test_values_follow_the_documented_ranges(conn: pg8000.native.Connection) -> None:
    seed(conn, SMALL)

    units_min, units_max, price_min, price_max = conn.run(
        "SELECT min(units_sold), max(units_sold), min(unit_price), max(unit_price) FROM sales_order"
    )[0]
    assert 1000 <= units_min <= units_max <= 100_000
    assert 2 <= price_min <= price_max <= 4
    assert sorted(r[0] for r in conn.run("SELECT currency_code FROM currency")) == [
        "EUR",
        "GBP",
        "USD",
    ]
    assert [r[0] for r in conn.run("SELECT payment_type_name FROM payment_type ORDER BY 1")] == [
        "PURCHASE_PAYMENT",
        "PURCHASE_REFUND",
        "SALES_RECEIPT",
        "SALES_REFUND",
    ]


def test_awkward_values_are_present(conn: pg8000.native.Connection) -> None:
    seed(conn, SMALL)

    names = [r[0] for r in conn.run("SELECT counterparty_legal_name FROM counterparty")]
    assert "Hartmann, Franecki and Ratke" in names
    assert any("'" in n for n in names)
    assert any('"' in n for n in names)
    assert any(not n.isascii() for n in names)
    assert any("O'Keefe" in r[0] for r in conn.run("SELECT last_name FROM staff"))
    for column in ("address_line_2", "district"):
        assert scalar(conn, f"SELECT count(*) FROM address WHERE {column} IS NULL") > 0, column
        assert scalar(conn, f"SELECT count(*) FROM address WHERE {column} = ''") > 0, column
    # numeric without a scale holds values of several scales; numeric(10,2) only two.
    scales = {r[0] for r in conn.run("SELECT DISTINCT scale(item_unit_price) FROM purchase_order")}
    assert {2, 4} <= scales
    assert {r[0] for r in conn.run("SELECT DISTINCT scale(unit_price) FROM sales_order")} == {2}
    # Dates are varchar 'yyyy-mm-dd'.
    dates = [
        r[0]
        for r in conn.run(
            "SELECT agreed_delivery_date FROM sales_order "
            "UNION ALL SELECT payment_date FROM payment"
        )
    ]
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", d) for d in dates)


def test_timestamps_have_millisecond_precision_within_the_history(
    conn: pg8000.native.Connection,
) -> None:
    seed(conn, SMALL)

    for table in TABLES:
        rows = conn.run(f'SELECT created_at, last_updated FROM "{table}"')
        for created_at, last_updated in rows:
            assert BASE_TIME <= created_at <= last_updated <= END_TIME, table
            assert created_at.microsecond % 1000 == 0, table
            assert last_updated.microsecond % 1000 == 0, table
        if table not in ("currency", "payment_type", "transaction"):
            assert any(created < updated for created, updated in rows), f"no updates in {table}"


def test_seed_refuses_a_database_with_totesys_rows_unless_forced(
    conn: pg8000.native.Connection,
) -> None:
    seed(conn, SMALL)
    conn.run("INSERT INTO currency (currency_code) VALUES ('JPY')")

    with pytest.raises(SeedError, match="--force"):
        seed(conn, SMALL)
    assert scalar(conn, "SELECT count(*) FROM currency") == 4

    assert seed(conn, SMALL, force=True)["currency"] == 3


def test_seed_fills_an_existing_empty_schema(conn: pg8000.native.Connection) -> None:
    create_schema(conn)

    assert seed(conn, SMALL)["sales_order"] == 500


def test_seed_refuses_part_of_a_schema(conn: pg8000.native.Connection) -> None:
    conn.run("CREATE TABLE currency (currency_id serial PRIMARY KEY)")

    with pytest.raises(SeedError, match="only part"):
        seed(conn, SMALL)


def test_a_failed_seed_leaves_nothing_behind(conn: pg8000.native.Connection) -> None:
    with pytest.raises(SeedError, match="positive"):
        seed(conn, 0)
    seed(conn, SMALL)
    schema = schema_objects(conn)
    conn.run("ALTER TABLE payment ADD CONSTRAINT tiny CHECK (payment_amount < 10) NOT VALID")

    with pytest.raises(pg8000.native.DatabaseError):
        seed(conn, SMALL, force=True)

    # The rollback kept the previous data and the schema as it was.
    assert scalar(conn, "SELECT count(*) FROM sales_order") == 500
    assert schema_objects(conn) - schema == {
        "payment CHECK ((payment_amount < (10)::numeric)) NOT VALID"
    }


def test_seeded_data_is_in_the_past(conn: pg8000.native.Connection) -> None:
    seed(conn, SMALL)

    newest: datetime = scalar(conn, "SELECT max(last_updated) FROM payment")

    assert newest <= scalar(conn, "SELECT localtimestamp")
