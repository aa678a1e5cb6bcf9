"""Business activity on a seeded ToteSys: what a following ingest run has to pick up.

Each change is one application transaction, as ToteSys makes them: a new sales or
purchase order with its transaction and payment, a payment arriving, an order amended, a
counterparty's contact or an address edited, a design added or renamed... Every row it
inserts or updates gets ``last_updated = now()`` (the transaction's start time, so all
rows of one change share it).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

from totes_ingest.local.seed import FIRST_NAMES, LAST_NAMES, LEGAL_NAMES, LINE_2, STREETS
from totes_ingest.local.totesys import TABLES


class SimulationError(RuntimeError):
    """The database has no ToteSys data to act on."""


_ID_COLUMNS: Final = {table: f"{table}_id" for table in TABLES}


class _Activity:
    """The state one simulation needs: a connection, a random source, the id ranges."""

    def __init__(self, conn: Any, rng: random.Random) -> None:
        self.conn = conn
        self.rng = rng
        self.max_id: dict[str, int] = {}
        for table in TABLES:
            value = conn.run(f'SELECT max({_ID_COLUMNS[table]}) FROM "{table}"')[0][0]  # nosec B608
            if value is None:
                raise SimulationError(f"table {table} is empty: seed the database first")
            self.max_id[table] = int(value)

    def pick(self, table: str) -> int:
        """A random existing id (ToteSys never deletes, so ids are dense)."""
        return self.rng.randint(1, self.max_id[table])

    def insert(self, table: str, row: dict[str, Any]) -> int:
        columns = ", ".join([*row, "created_at", "last_updated"])
        values = ", ".join([*(f":{name}" for name in row), "now()", "now()"])
        new_id = int(
            self.conn.run(
                f'INSERT INTO "{table}" ({columns}) VALUES ({values}) '  # nosec B608
                f"RETURNING {_ID_COLUMNS[table]}",
                **row,
            )[0][0]
        )
        self.max_id[table] = max(self.max_id[table], new_id)
        return new_id

    def update(self, table: str, row_id: int, changes: dict[str, Any]) -> int:
        assignments = ", ".join(f"{name} = :{name}" for name in changes)
        self.conn.run(
            f'UPDATE "{table}" SET {assignments}, last_updated = now() '  # nosec B608
            f"WHERE {_ID_COLUMNS[table]} = :row_id",
            row_id=row_id,
            **changes,
        )
        return int(self.conn.row_count)

    def date(self, days_ahead: int) -> str:
        """A 'yyyy-mm-dd' date relative to the database's today, as ToteSys stores dates."""
        value = self.conn.run(
            "SELECT to_char(CAST(now() AS date) + CAST(:days AS int), 'YYYY-MM-DD')",
            days=days_ahead,
        )[0][0]
        return str(value)


Change = Callable[[_Activity], Counter[str]]


def new_sales_order(a: _Activity) -> Counter[str]:
    units, price = a.rng.randint(1000, 100_000), Decimal(a.rng.randint(200, 400)) / 100
    counterparty, currency = a.pick("counterparty"), a.pick("currency")
    payment_date = a.date(a.rng.randint(0, 10))
    order = a.insert(
        "sales_order",
        {
            "design_id": a.pick("design"),
            "staff_id": a.pick("staff"),
            "counterparty_id": counterparty,
            "units_sold": units,
            "unit_price": price,
            "currency_id": currency,
            "agreed_delivery_date": a.date(a.rng.randint(2, 14)),
            "agreed_payment_date": payment_date,
            "agreed_delivery_location_id": a.pick("address"),
        },
    )
    transaction = a.insert(
        "transaction",
        {"transaction_type": "SALE", "sales_order_id": order, "purchase_order_id": None},
    )
    _new_payment(a, transaction, counterparty, units * price, currency, 1, payment_date)
    return Counter(sales_order=1, transaction=1, payment=1)


def new_purchase_order(a: _Activity) -> Counter[str]:
    quantity = a.rng.randint(1, 1000)
    # numeric without a scale: most prices have two decimals, some four.
    places = 4 if a.rng.random() < 0.1 else 2
    price = Decimal(a.rng.randint(10**places, 1000 * 10**places)) / 10**places
    counterparty, currency = a.pick("counterparty"), a.pick("currency")
    payment_date = a.date(a.rng.randint(0, 30))
    order = a.insert(
        "purchase_order",
        {
            "staff_id": a.pick("staff"),
            "counterparty_id": counterparty,
            "item_code": "".join(a.rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=7)),
            "item_quantity": quantity,
            "item_unit_price": price,
            "currency_id": currency,
            "agreed_delivery_date": a.date(a.rng.randint(1, 30)),
            "agreed_payment_date": payment_date,
            "agreed_delivery_location_id": a.pick("address"),
        },
    )
    transaction = a.insert(
        "transaction",
        {"transaction_type": "PURCHASE", "sales_order_id": None, "purchase_order_id": order},
    )
    _new_payment(a, transaction, counterparty, quantity * price, currency, 3, payment_date)
    return Counter(purchase_order=1, transaction=1, payment=1)


def _new_payment(
    a: _Activity,
    transaction: int,
    counterparty: int,
    amount: Decimal,
    currency: int,
    payment_type: int,
    payment_date: str,
) -> None:
    a.insert(
        "payment",
        {
            "transaction_id": transaction,
            "counterparty_id": counterparty,
            "payment_amount": amount,
            "currency_id": currency,
            "payment_type_id": payment_type,
            "paid": False,
            "payment_date": payment_date,
            "company_ac_number": a.rng.randint(10_000_000, 99_999_999),
            "counterparty_ac_number": a.rng.randint(10_000_000, 99_999_999),
        },
    )


def payment_received(a: _Activity) -> Counter[str]:
    """The next unpaid payment at or after a random one is marked paid."""
    found = a.conn.run(
        "SELECT payment_id FROM payment WHERE NOT paid AND payment_id >= :start "
        "ORDER BY payment_id LIMIT 1",
        start=a.pick("payment"),
    )
    if not found:
        return new_sales_order(a)
    return Counter(payment=a.update("payment", int(found[0][0]), {"paid": True}))


def sales_order_amended(a: _Activity) -> Counter[str]:
    changes = {
        "units_sold": a.rng.randint(1000, 100_000),
        "agreed_delivery_date": a.date(a.rng.randint(3, 20)),
    }
    return Counter(sales_order=a.update("sales_order", a.pick("sales_order"), changes))


def counterparty_contact_changed(a: _Activity) -> Counter[str]:
    column = a.rng.choice(["commercial_contact", "delivery_contact"])
    contact = (
        None if a.rng.random() < 0.2 else f"{a.rng.choice(FIRST_NAMES)} {a.rng.choice(LAST_NAMES)}"
    )
    return Counter(counterparty=a.update("counterparty", a.pick("counterparty"), {column: contact}))


def address_edited(a: _Activity) -> Counter[str]:
    changes: dict[str, Any] = a.rng.choice(
        [
            {"phone": f"{a.rng.randint(1000, 9999)} {a.rng.randint(100000, 999999)}"},
            {"address_line_2": a.rng.choice([None, "", a.rng.choice(LINE_2)])},
            {"district": a.rng.choice([None, ""])},
        ]
    )
    return Counter(address=a.update("address", a.pick("address"), changes))


def design_added(a: _Activity) -> Counter[str]:
    name = a.rng.choice(["Granite", "Bespoke", "Soft", "Steel", "Cotton", "Zoë's"])
    a.insert(
        "design",
        {
            "design_name": name,
            "file_location": "/usr/local",
            "file_name": f"{name.lower()}-{a.rng.getrandbits(32):08x}.json",
        },
    )
    return Counter(design=1)


def design_renamed(a: _Activity) -> Counter[str]:
    changes = {"file_name": f"renamed-{a.rng.getrandbits(32):08x}.json"}
    return Counter(design=a.update("design", a.pick("design"), changes))


def staff_moved(a: _Activity) -> Counter[str]:
    changes = {"department_id": a.pick("department")}
    return Counter(staff=a.update("staff", a.pick("staff"), changes))


def counterparty_joined(a: _Activity) -> Counter[str]:
    address = a.insert(
        "address",
        {
            "address_line_1": f"{a.rng.randint(1, 999)} {a.rng.choice(STREETS)}",
            "address_line_2": a.rng.choice([None, ""]),
            "district": None,
            "city": "Kraków",
            "postal_code": f"{a.rng.randint(10, 99)}-{a.rng.randint(100, 999)}",
            "country": "Poland",
            "phone": f"{a.rng.randint(1000, 9999)} {a.rng.randint(100000, 999999)}",
        },
    )
    name = f"{a.rng.choice(LEGAL_NAMES)} ({a.rng.randint(2, 99)})"
    a.insert(
        "counterparty",
        {
            "counterparty_legal_name": name,
            "legal_address_id": address,
            "commercial_contact": None,
            "delivery_contact": None,
        },
    )
    return Counter(address=1, counterparty=1)


# Relative frequency of each kind of change.
CHANGES: Final[tuple[tuple[Change, int], ...]] = (
    (new_sales_order, 40),
    (new_purchase_order, 15),
    (payment_received, 15),
    (sales_order_amended, 8),
    (counterparty_contact_changed, 5),
    (address_edited, 5),
    (design_added, 5),
    (design_renamed, 3),
    (staff_moved, 2),
    (counterparty_joined, 2),
)


def simulate(conn: Any, changes: int, seed: int | None = None) -> dict[str, int]:
    """Apply ``changes`` business changes, each in its own transaction; versions per table.

    The count is of row versions written: a row inserted and then updated in the same
    simulation counts twice, though an ingest run afterwards sees only its last version.
    ``seed`` makes the choices repeatable (the timestamps are the database's ``now()``).
    """
    if changes < 0:
        raise SimulationError(f"changes must not be negative, not {changes}")
    activity = _Activity(conn, random.Random(seed))  # noqa: S311 - sample data
    kinds, weights = zip(*CHANGES, strict=True)
    totals: Counter[str] = Counter()
    for change in activity.rng.choices(kinds, weights=weights, k=changes):
        conn.run("START TRANSACTION")
        try:
            totals += change(activity)
            conn.run("COMMIT")
        except BaseException:
            conn.run("ROLLBACK")
            raise
    return {table: totals[table] for table in TABLES}
