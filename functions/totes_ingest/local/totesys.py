"""The ToteSys schema, for local runs and tests."""

from __future__ import annotations

from importlib.resources import files
from typing import Any, Final

TABLES: Final = (
    "currency",
    "department",
    "address",
    "staff",
    "counterparty",
    "design",
    "payment_type",
    "sales_order",
    "purchase_order",
    "transaction",
    "payment",
)


def schema_sql() -> str:
    return files("totes_ingest.local").joinpath("totesys_schema.sql").read_text()


def create_schema(conn: Any) -> None:
    """Create the eleven ToteSys tables in ``conn``'s database (which must be empty)."""
    for statement in schema_sql().split(";"):
        body = "\n".join(
            line for line in statement.splitlines() if not line.lstrip().startswith("--")
        ).strip()
        if body:
            conn.run(body)
