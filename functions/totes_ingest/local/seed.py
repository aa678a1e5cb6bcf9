"""Realistic, deterministic ToteSys data for local runs and tests.

The small reference tables are written from fixed lists; the growing ones (design,
sales_order, purchase_order, transaction, payment) are generated inside PostgreSQL with
``INSERT ... SELECT ... FROM generate_series`` after ``setseed``, so a million sales
orders take seconds. The same scale on the same PostgreSQL major version always yields
the same rows.

History starts on 2022-11-03 and spans :data:`HISTORY`; timestamps have millisecond
precision, as the ToteSys application writes them. The data carries the awkward values of
the real database: legal names with commas, quotes, apostrophes and non-ASCII letters,
both ``''`` and NULL in optional text columns, dates as varchar, ``numeric`` values of
varying scale next to ``numeric(10,2)``.
"""

from __future__ import annotations

import random
import sys
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Final

from totes_ingest.local.totesys import TABLES, create_schema

BASE_TIME: Final = datetime(2022, 11, 3, 14, 20, 49, 962000)
HISTORY: Final = timedelta(days=600)
END_TIME: Final = BASE_TIME + HISTORY

# Rows at scale 1 of the tables that grow with --scale; transaction and payment follow
# the orders (one transaction per order, one payment per transaction).
GROWING: Final = {"design": 500, "sales_order": 10_000, "purchase_order": 4_000}

_PY_SEED: Final = 20221103
_SQL_SEED: Final = 0.20221103


class SeedError(RuntimeError):
    """The database cannot be seeded as asked (it already holds data, or half a schema)."""


CURRENCIES: Final = ("GBP", "USD", "EUR")
PAYMENT_TYPES: Final = ("SALES_RECEIPT", "SALES_REFUND", "PURCHASE_PAYMENT", "PURCHASE_REFUND")
DEPARTMENTS: Final = (
    ("Sales", "Manchester", "Richard Roma"),
    ("Purchasing", "Manchester", "Naomi Lapaglia"),
    ("Production", "Leeds", "Chester Ratke"),
    ("Dispatch", "Leeds", "Mark Hanna"),
    ("Finance", "Manchester", "Jordan Belfort"),
    ("Facilities", "Manchester", "Shelley Levene"),
    ("Communications", None, "Ainsley O'Keefe"),
    ("HR", "Leeds", None),
)
FIRST_NAMES: Final = (
    "Jeremie",
    "Deron",
    "Jeanette",
    "Ana",
    "Magdalena",
    "Korey",
    "Raphael",
    "Oswaldo",
    "Brody",
    "Jazmyn",
    "Meda",
    "Imani",
    "Stan",
    "Rigoberto",
    "Tom",
    "Zoë",
    "Siobhán",
    "Eleonora",
    "Björn",
    "Irving",
)
LAST_NAMES: Final = (
    "Franey",
    "Beier",
    "Erdman",
    "Glover",
    "Zieme",
    "Walsh",
    "O'Keefe",
    "Bednar",
    "Ó Súilleabháin",
    "Müller",
    "Wolff",
    "Cassin",
    "Lehner",
    "Quitzon",
    "Reichert",
    "D'Amore",
    "Kozey",
    "Núñez",
    "Nowak",
    "Hagenes",
)
LEGAL_NAMES: Final = (
    "Fahey and Sons",
    "Leannon, Predovic and Morar",
    "Hartmann, Franecki and Ratke",
    "Armstrong Inc",
    "Kohler Inc",
    "O'Keefe, Brakus & Bartoletti",
    "Frami, Yundt and Macejkovic",
    'Mraz "The Bag People" LLC',
    "Padberg, Lueilwitz and Johnson",
    "Grant - Lakin",
    "Price LLC",
    "Bryce Group",
    "Müller & Söhne GmbH",
    "Żabka Torby Sp. z o.o.",
    "Moen, Kshlerin and D'Amore",
    "Jacobi Inc",
    "Beahan, Hodkiewicz & Huel",
    "Cormier O'Conner",
    "Ørsted Tekstil A/S",
    "Tillman - Fisher",
)
STREETS: Final = (
    "Bartell Way",
    "Carroll Ferry",
    "Ellen Mountains",
    "Emily Rue",
    "Ethan Forge",
    "Hoeger Brook",
    "Kub Pine",
    "Lemke Parkway",
    "Maggio Gardens",
    "O'Reilly Crest",
    "Pfeffer Spur",
    "Rempel Isle",
    "Runolfsson Rapid",
    "Ullrich Orchard",
    "Zieme Gateway",
)
LINE_2: Final = ("Apartment 4", "Suite 120", "Unit 7b", "Floor 3, Block C", "c/o Reception")
DISTRICTS: Final = (
    "Avon",
    "Bedfordshire",
    "Buckinghamshire",
    "Cambridgeshire",
    "Cornwall",
    "Derbyshire",
    "Île-de-France",
    "Bayern",
)
CITIES: Final = (
    "New Patienceburgh",
    "Aliso Viejo",
    "Lake Charles",
    "Fresno",
    "Sayreville",
    "Olsonside",
    "Shanahanview",
    "Kendraburgh",
    "Münster",
    "São Paulo",
    "Kraków",
    "Reykjavík",
)
COUNTRIES: Final = (
    "Austria",
    "Turkey",
    "Greenland",
    "United Kingdom",
    "Côte d'Ivoire",
    "São Tomé and Príncipe",
    "Åland Islands",
    "Curaçao",
    "Germany",
    "Poland",
)
DESIGN_WORDS: Final = (
    "Wooden",
    "Bronze",
    "Granite",
    "Soft",
    "Fresh",
    "Steel",
    "Cotton",
    "Plastic",
    "Rubber",
    "Frozen",
    "Concrete",
    "Metal",
    "Cotton",
    "Bespoke",
    "Oak",
    "Tasty",
)
FILE_LOCATIONS: Final = (
    "/usr",
    "/private",
    "/System",
    "/Library",
    "/opt/include",
    "/home/user/dir",
    "/usr/share",
    "/var/lib",
    "/etc/mail",
    "/srv",
)


def _ms(moment: datetime) -> datetime:
    """Millisecond precision, as the ToteSys application writes timestamps."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isascii() and c.isalnum()).lower()


def totesys_tables_present(conn: Any) -> set[str]:
    """Which of the eleven ToteSys tables exist in the connection's current schema."""
    rows = conn.run(
        "SELECT table_name::text FROM information_schema.tables "
        "WHERE table_schema = current_schema() AND table_name = ANY(CAST(:names AS text[]))",
        names=list(TABLES),
    )
    return {row[0] for row in rows}


def tables_with_rows(conn: Any) -> list[str]:
    """The ToteSys tables that hold at least one row (the schema must exist)."""
    return [t for t in TABLES if conn.run(f'SELECT EXISTS (SELECT 1 FROM "{t}")')[0][0]]  # nosec B608


def row_counts(conn: Any) -> dict[str, int]:
    return {t: int(conn.run(f'SELECT count(*) FROM "{t}"')[0][0]) for t in TABLES}  # nosec B608


def to_stderr(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def seed(
    conn: Any,
    scale: float = 1,
    *,
    force: bool = False,
    progress: Callable[[str], None] = to_stderr,
) -> dict[str, int]:
    """Create the ToteSys schema if needed and fill it; rows per table.

    ``scale`` multiplies the growing tables (design, sales_order, purchase_order and so
    transaction and payment); the reference tables keep their real sizes. A database
    whose ToteSys tables already hold rows is refused unless ``force``, which empties
    them first: seeding is for fresh databases, never for someone's real data.
    Everything happens in one transaction; ``progress`` hears of each step as it starts
    (a million orders take a while).
    """
    if not scale > 0:
        raise SeedError(f"scale must be positive, not {scale!r}")
    present = totesys_tables_present(conn)
    if present and present != set(TABLES):
        missing = ", ".join(t for t in TABLES if t not in present)
        raise SeedError(f"the database has only part of the ToteSys schema (missing: {missing})")
    if present:
        filled = tables_with_rows(conn)
        if filled and not force:
            raise SeedError(
                f"the ToteSys tables already hold rows ({', '.join(filled)}); "
                "use --force to empty them and seed again"
            )
    conn.run("START TRANSACTION")
    try:
        if present:
            conn.run(
                "TRUNCATE " + ", ".join(f'"{t}"' for t in TABLES) + " RESTART IDENTITY CASCADE"
            )
        else:
            create_schema(conn)
        progress("reference tables")
        _seed_reference_tables(conn, random.Random(_PY_SEED))  # noqa: S311 - sample data
        _seed_growing_tables(conn, scale, progress)
        progress("commit")
        conn.run("COMMIT")
    except BaseException:
        conn.run("ROLLBACK")
        raise
    progress("analyze")
    conn.run("ANALYZE")
    return row_counts(conn)


def _insert(conn: Any, table: str, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        columns = ", ".join(row)
        values = ", ".join(f":{name}" for name in row)
        conn.run(f'INSERT INTO "{table}" ({columns}) VALUES ({values})', **row)  # nosec B608


def _times(rng: random.Random, at: datetime, updated_share: float) -> dict[str, datetime]:
    """created_at near ``at``; last_updated equal to it, or later for updated rows."""
    created = _ms(at + timedelta(milliseconds=rng.randrange(0, 60_000)))
    updated = created
    if rng.random() < updated_share:
        updated = _ms(created + timedelta(seconds=rng.randrange(1, int(HISTORY.total_seconds()))))
        updated = min(updated, _ms(END_TIME))
    return {"created_at": created, "last_updated": updated}


def _seed_reference_tables(conn: Any, rng: random.Random) -> None:
    _insert(
        conn,
        "currency",
        [{"currency_code": code, **_times(rng, BASE_TIME, 0)} for code in CURRENCIES],
    )
    _insert(
        conn,
        "payment_type",
        [{"payment_type_name": name, **_times(rng, BASE_TIME, 0)} for name in PAYMENT_TYPES],
    )
    _insert(
        conn,
        "department",
        [
            {
                "department_name": name,
                "location": location,
                "manager": manager,
                **_times(rng, BASE_TIME, 0.25),
            }
            for name, location, manager in DEPARTMENTS
        ],
    )
    _insert(conn, "address", [_address(rng, i) for i in range(30)])
    staff = []
    for i in range(20):
        first, last = FIRST_NAMES[i], LAST_NAMES[(i * 7) % len(LAST_NAMES)]
        staff.append(
            {
                "first_name": first,
                "last_name": last,
                "department_id": 1 + rng.randrange(len(DEPARTMENTS)),
                "email_address": f"{_ascii(first)}.{_ascii(last)}@terrifictotes.com",
                **_times(rng, BASE_TIME, 0.2),
            }
        )
    _insert(conn, "staff", staff)
    contacts = [f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}" for _ in range(40)]
    _insert(
        conn,
        "counterparty",
        [
            {
                "counterparty_legal_name": name,
                "legal_address_id": 1 + rng.randrange(30),
                # Contacts are optional: a few are missing.
                "commercial_contact": None if i % 9 == 4 else contacts[i],
                "delivery_contact": None if i % 7 == 5 else contacts[20 + i],
                **_times(rng, BASE_TIME, 0.3),
            }
            for i, name in enumerate(LEGAL_NAMES)
        ],
    )


def _address(rng: random.Random, i: int) -> dict[str, Any]:
    # The first rows pin both NULL and '' in the optional columns; the rest vary.
    line_2: str | None
    district: str | None
    if i < 4:
        line_2, district = [(None, None), ("", ""), (None, ""), ("", None)][i]
    else:
        line_2 = rng.choice([None, None, "", rng.choice(LINE_2)])
        district = rng.choice([None, "", rng.choice(DISTRICTS), rng.choice(DISTRICTS)])
    return {
        "address_line_1": f"{rng.randrange(1, 999)} {rng.choice(STREETS)}",
        "address_line_2": line_2,
        "district": district,
        "city": rng.choice(CITIES),
        "postal_code": f"{rng.randrange(10000, 99999)}-{rng.randrange(1000, 9999)}"
        if rng.random() < 0.5
        else f"{rng.randrange(10000, 99999)}",
        "country": rng.choice(COUNTRIES),
        "phone": f"{rng.randrange(1000, 9999)} {rng.randrange(100000, 999999)}",
        **_times(rng, BASE_TIME, 0.3),
    }


def _sql_pick(values: tuple[str, ...]) -> str:
    """SQL for a random one of our own constants (generated SQL, no user input)."""
    array = "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"
    return f"({array})[CAST(1 + floor(random() * {len(values)}) AS int)]"


# created_at of row g of n: spread evenly over the history, with jitter, at ms precision.
_CREATED_AT = (
    "date_trunc('milliseconds', CAST(:base AS timestamp) "
    "+ (CAST(g AS float8) - 1 + random()) / :n * CAST(:history AS interval))"
)
# last_updated: a fifth of the rows were updated later (never past the end of history).
_LAST_UPDATED = (
    "CASE WHEN random() < 0.2 THEN date_trunc('milliseconds', least(CAST(:end AS timestamp), "
    "created_at + random() * interval '60 days')) ELSE created_at END"
)


_BULK_TABLES: Final = ("design", "sales_order", "purchase_order", "transaction", "payment")


@contextmanager
def _bulk_load(conn: Any, tables: tuple[str, ...]) -> Iterator[None]:
    """Drop the tables' foreign keys and secondary indexes, then re-create them.

    Checking foreign keys row by row is most of the cost of a bulk insert; adding them
    afterwards validates every row in one join, so the data is still proven consistent.
    Must run inside a transaction (an error rolls the drops back).
    """
    foreign_keys = conn.run(
        "SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid) "
        "FROM pg_constraint WHERE contype = 'f' AND connamespace = current_schema()::regnamespace "
        "AND conrelid::regclass::text = ANY(CAST(:tables AS text[]))",
        tables=list(tables),
    )
    indexes = conn.run(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index AS i "
        "JOIN pg_class AS c ON c.oid = i.indrelid "
        "WHERE c.relnamespace = current_schema()::regnamespace "
        "AND c.relname = ANY(CAST(:tables AS text[])) "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint AS k WHERE k.conindid = i.indexrelid)",
        tables=list(tables),
    )
    for table, name, _ in foreign_keys:
        conn.run(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        conn.run(f"DROP INDEX {name}")
    yield
    for _, definition in indexes:
        conn.run(definition)
    for table, name, definition in foreign_keys:
        conn.run(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')


def _seed_growing_tables(conn: Any, scale: float, progress: Callable[[str], None]) -> None:
    n = {table: max(1, round(size * scale)) for table, size in GROWING.items()}
    # Sorts and index builds of millions of rows stay in memory rather than spill to disk.
    conn.run("SET LOCAL work_mem = '256MB'")
    conn.run("SET LOCAL maintenance_work_mem = '256MB'")
    with _bulk_load(conn, _BULK_TABLES):
        _generate(conn, n, progress)
        progress("indexes and foreign keys")


def _generate(conn: Any, n: dict[str, int], progress: Callable[[str], None]) -> None:
    common = {"base": BASE_TIME, "history": HISTORY, "end": END_TIME}
    conn.run("SELECT setseed(:seed)", seed=_SQL_SEED)
    progress(f"design: {n['design']:,} rows")
    conn.run(  # fixed table/column names; values are bound parameters
        f"""
        INSERT INTO design (design_name, file_location, file_name, created_at, last_updated)
        SELECT name, location, lower(name) || '-' || to_char(created_at, 'YYYYMMDD')
               || '.json', created_at, {_LAST_UPDATED}
        FROM (SELECT g, {_CREATED_AT} AS created_at,
                     {_sql_pick(DESIGN_WORDS)}
                       AS name,
                     {_sql_pick(FILE_LOCATIONS)}
                       AS location
              FROM generate_series(1, CAST(:n AS int)) AS g) AS d
        ORDER BY g
        """,  # nosec B608
        n=n["design"],
        **common,
    )
    progress(f"sales_order: {n['sales_order']:,} rows")
    # An order only uses designs that existed when it was placed (ids grow with time).
    conn.run(  # fixed table/column names; values are bound parameters
        f"""
        INSERT INTO sales_order (design_id, staff_id, counterparty_id, units_sold, unit_price,
            currency_id, agreed_delivery_date, agreed_payment_date,
            agreed_delivery_location_id, created_at, last_updated)
        SELECT 1 + floor(random() * greatest(1, floor(CAST(:designs AS float8) * (g - 1) / :n))),
               1 + floor(random() * 20), 1 + floor(random() * 20),
               1000 + floor(random() * 99001),
               round(CAST(2 + random() * 2 AS numeric), 2),
               (ARRAY[1, 1, 1, 1, 2, 2, 3])[CAST(1 + floor(random() * 7) AS int)],
               to_char(created_at + (2 + floor(random() * 12)) * interval '1 day', 'YYYY-MM-DD'),
               to_char(created_at + floor(random() * 10) * interval '1 day', 'YYYY-MM-DD'),
               1 + floor(random() * 30),
               created_at, {_LAST_UPDATED}
        FROM (SELECT g, {_CREATED_AT} AS created_at
              FROM generate_series(1, CAST(:n AS int)) AS g) AS s
        ORDER BY g
        """,  # nosec B608
        n=n["sales_order"],
        designs=n["design"],
        **common,
    )
    progress(f"purchase_order: {n['purchase_order']:,} rows")
    # item_unit_price is numeric without a scale: most prices have two decimals, some four.
    conn.run(  # fixed table/column names; values are bound parameters
        f"""
        INSERT INTO purchase_order (staff_id, counterparty_id, item_code, item_quantity,
            item_unit_price, currency_id, agreed_delivery_date, agreed_payment_date,
            agreed_delivery_location_id, created_at, last_updated)
        SELECT 1 + floor(random() * 20), 1 + floor(random() * 20),
               translate(upper(substr(md5('po' || g), 1, 7)), '0123456', 'ZDOIQXW'),
               1 + floor(random() * 1000),
               CASE WHEN random() < 0.1
                    THEN round(CAST(1 + random() * 999 AS numeric), 4)
                    ELSE round(CAST(1 + random() * 999 AS numeric), 2) END,
               (ARRAY[1, 1, 2, 3])[CAST(1 + floor(random() * 4) AS int)],
               to_char(created_at + (1 + floor(random() * 30)) * interval '1 day', 'YYYY-MM-DD'),
               to_char(created_at + floor(random() * 30) * interval '1 day', 'YYYY-MM-DD'),
               1 + floor(random() * 30),
               created_at, {_LAST_UPDATED}
        FROM (SELECT g, {_CREATED_AT} AS created_at
              FROM generate_series(1, CAST(:n AS int)) AS g) AS p
        ORDER BY g
        """,  # nosec B608
        n=n["purchase_order"],
        **common,
    )
    transactions = n["sales_order"] + n["purchase_order"]
    progress(f"transaction: {transactions:,} rows")
    conn.run(
        """
        INSERT INTO transaction (transaction_type, sales_order_id, purchase_order_id,
                                 created_at, last_updated)
        SELECT kind, sales_order_id, purchase_order_id, created_at, created_at
        FROM (SELECT 'SALE' AS kind, sales_order_id, CAST(NULL AS int) AS purchase_order_id,
                     created_at FROM sales_order
              UNION ALL
              SELECT 'PURCHASE', NULL, purchase_order_id, created_at FROM purchase_order) AS t
        ORDER BY created_at, kind, coalesce(sales_order_id, purchase_order_id)
        """
    )
    progress(f"payment: {transactions:,} rows")
    # One payment per transaction, for the order's amount; 5% are refunds; paid ones
    # were updated when the payment arrived.
    conn.run(
        """
        INSERT INTO payment (transaction_id, counterparty_id, payment_amount, currency_id,
            payment_type_id, paid, payment_date, company_ac_number, counterparty_ac_number,
            created_at, last_updated)
        SELECT transaction_id, counterparty_id, amount, currency_id,
               CASE WHEN kind = 'SALE' THEN 1 ELSE 3 END
                 + CASE WHEN r_type < 0.05 THEN 1 ELSE 0 END,
               paid, payment_date,
               10000000 + floor(r_company * 90000000), 10000000 + floor(r_counterparty * 90000000),
               created_at,
               CASE WHEN paid THEN date_trunc('milliseconds', least(CAST(:end AS timestamp),
                        created_at + r_paid * interval '45 days'))
                    ELSE created_at END
        FROM (SELECT o.*, random() AS r_type, random() < 0.8 AS paid, random() AS r_paid,
                     random() AS r_company, random() AS r_counterparty
              FROM (SELECT t.transaction_id, t.transaction_type AS kind, t.created_at,
                           coalesce(s.counterparty_id, p.counterparty_id) AS counterparty_id,
                           coalesce(s.units_sold * s.unit_price,
                                    p.item_quantity * p.item_unit_price) AS amount,
                           coalesce(s.currency_id, p.currency_id) AS currency_id,
                           coalesce(s.agreed_payment_date, p.agreed_payment_date)
                             AS payment_date
                    FROM transaction AS t
                    LEFT JOIN sales_order AS s USING (sales_order_id)
                    LEFT JOIN purchase_order AS p USING (purchase_order_id)
                    ORDER BY t.transaction_id
                    OFFSET 0) AS o) AS r
        """,
        end=END_TIME,
    )
