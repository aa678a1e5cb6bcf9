"""``simulate``: application-like changes that a following run has to ingest."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pg8000.native
import pytest

from totes_ingest.local.seed import END_TIME, seed
from totes_ingest.local.simulate import SimulationError, simulate
from totes_ingest.local.totesys import TABLES, create_schema

pytestmark = pytest.mark.integration


@pytest.fixture
def seeded(conn: pg8000.native.Connection) -> pg8000.native.Connection:
    seed(conn, 0.05)
    return conn


def clock(conn: pg8000.native.Connection) -> datetime:
    value: datetime = conn.run("SELECT CAST(clock_timestamp() AS timestamp)")[0][0]
    return value


def changed_since(conn: pg8000.native.Connection, since: datetime) -> dict[str, int]:
    return {
        table: conn.run(f'SELECT count(*) FROM "{table}" WHERE last_updated >= :t', t=since)[0][0]
        for table in TABLES
    }


def test_changes_land_with_last_updated_now(seeded: pg8000.native.Connection) -> None:
    before = clock(seeded)

    versions = simulate(seeded, 60, seed=1)

    after = clock(seeded)
    rows = changed_since(seeded, before)
    for table in TABLES:
        # A row changed twice in the simulation is one row with its last version.
        assert (rows[table] > 0) == (versions[table] > 0), table
        assert rows[table] <= versions[table], table
    newest = seeded.run("SELECT max(last_updated) FROM payment")[0][0]
    assert before <= newest <= after
    # Nothing else moved: every other row still has its seeded timestamp.
    for table in TABLES:
        stale = seeded.run(
            f'SELECT count(*) FROM "{table}" WHERE last_updated > :end AND last_updated < :t',
            end=END_TIME,
            t=before,
        )[0][0]
        assert stale == 0, table
    assert sum(versions.values()) >= 60


def test_an_order_its_transaction_and_payment_share_one_transaction_time(
    seeded: pg8000.native.Connection,
) -> None:
    before = clock(seeded)

    simulate(seeded, 40, seed=2)

    orders = seeded.run(
        """
        SELECT s.created_at, s.last_updated, t.created_at, p.created_at
        FROM sales_order AS s
        JOIN transaction AS t USING (sales_order_id)
        JOIN payment AS p USING (transaction_id)
        WHERE s.created_at >= :t
        """,
        t=before,
    )
    assert orders
    for order_created, order_updated, transaction_created, payment_created in orders:
        # now() is the transaction's start: one value for every row of the change.
        assert order_created == transaction_created == payment_created
        assert order_updated >= order_created


def test_new_payments_are_for_the_orders_amount(seeded: pg8000.native.Connection) -> None:
    before = clock(seeded)

    simulate(seeded, 80, seed=3)

    mismatches = seeded.run(
        """
        SELECT count(*) FROM payment AS p
        JOIN transaction AS t USING (transaction_id)
        LEFT JOIN sales_order AS s USING (sales_order_id)
        LEFT JOIN purchase_order AS o USING (purchase_order_id)
        WHERE p.created_at >= :t
          AND (p.payment_amount <> coalesce(s.units_sold * s.unit_price,
                                            o.item_quantity * o.item_unit_price)
               OR p.counterparty_id <> coalesce(s.counterparty_id, o.counterparty_id))
        """,
        t=before,
    )[0][0]
    assert mismatches == 0


def test_a_seed_makes_the_choices_repeatable(conn: pg8000.native.Connection) -> None:
    def run_once() -> tuple[dict[str, int], list[Any]]:
        seed(conn, 0.05, force=True)
        versions = simulate(conn, 50, seed=42)
        orders = conn.run(
            "SELECT units_sold, unit_price, counterparty_id FROM sales_order "
            "ORDER BY sales_order_id DESC LIMIT 10"
        )
        return versions, orders

    assert run_once() == run_once()


def test_no_changes_change_nothing(seeded: pg8000.native.Connection) -> None:
    before = clock(seeded)

    assert simulate(seeded, 0) == dict.fromkeys(TABLES, 0)
    assert sum(changed_since(seeded, before).values()) == 0


def test_simulate_needs_seeded_tables(conn: pg8000.native.Connection) -> None:
    create_schema(conn)

    with pytest.raises(SimulationError, match="seed the database first"):
        simulate(conn, 5)
