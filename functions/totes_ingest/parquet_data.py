"""Dictionaries of rows to Parquet bytes (small results; the extract path streams).

With a table's catalog schema (``pg_types.table_schema``) the file has exactly the
schema the streaming extract gives the same table; pg8000's Python values are brought
to that mapping here: an unconstrained numeric becomes its exact decimal text, json is
serialised back to text, an interval becomes its (months, days, microseconds) struct.
pg8000 parses json and normalises intervals before they reach us, so for those two
types the values (not the schema) may differ from the streaming path's, which keeps
the server's own text and fields: use the streaming extract for anything but look-ups.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from totes_ingest.errors import UnsupportedColumnType
from totes_ingest.pg_types import INTERVAL, PG_TYPE_KEY

Convert = Callable[[Any], Any]


def parquet_data(py_dict: Mapping[str, Any], schema: pa.Schema | None = None) -> io.BytesIO:
    """Parquet bytes of ``py_dict``, positioned at 0.

    ``py_dict`` is ``query_db``'s output: one key whose value is a list of row
    dictionaries. With ``schema`` (the table's catalog schema) the file is typed exactly
    as the streaming extract types it; without, types are inferred from the values.
    """
    rows = _rows_of(py_dict)
    if schema is None:
        table = pa.Table.from_pylist(list(rows))
    else:
        table = pa.Table.from_pylist(_conformed(rows, schema), schema=schema)
    out_buffer = io.BytesIO()
    pq.write_table(table, out_buffer)
    out_buffer.seek(0)
    return out_buffer


def _rows_of(py_dict: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    values = list(py_dict.values())
    if len(values) == 1 and isinstance(values[0], list):
        return values[0]
    raise ValueError("expected query_db output: one key whose value is a list of rows")


def _conformed(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> list[dict[str, Any]]:
    """``rows`` with each pg8000 value in the form the catalog schema's type takes."""
    converters = {
        field.name: convert
        for field in schema
        if (convert := _converter(field.type, _pg_type(field))) is not None
    }
    if not converters:
        return [dict(row) for row in rows]
    conformed = []
    for row in rows:
        out = dict(row)
        for name, convert in converters.items():
            value = out.get(name)
            if value is not None:
                try:
                    out[name] = convert(value)
                except (ValueError, ArithmeticError) as e:
                    raise UnsupportedColumnType(
                        f"column {name!r} holds a value with no faithful Arrow form: {e}"
                    ) from e
        conformed.append(out)
    return conformed


def _pg_type(field: pa.Field) -> str:
    metadata: dict[bytes, bytes] = field.metadata or {}
    return metadata.get(PG_TYPE_KEY, b"").decode()


def _converter(arrow_type: pa.DataType, pg_type: str) -> Convert | None:
    """How a pg8000 value of ``pg_type`` becomes a value of ``arrow_type`` (None: as is)."""
    base = pg_type.removesuffix("[]")
    if pa.types.is_list(arrow_type):
        element = _converter(arrow_type.value_type, base)
        if element is None:
            return None
        return lambda values: [None if v is None else element(v) for v in values]
    if arrow_type == pa.json_():
        return _json_text
    if arrow_type == INTERVAL:
        return _interval
    if pa.types.is_string(arrow_type):
        return _text
    if pa.types.is_decimal(arrow_type):
        return _finite_decimal
    return None


def _text(value: Any) -> Any:
    """A numeric as PostgreSQL's text (positional, trailing zeros kept, NaN, Infinity)."""
    return format(value, "f") if isinstance(value, Decimal) else value


def _finite_decimal(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise ValueError(f"{value} does not fit a decimal type")
    return value


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _interval(value: Any) -> dict[str, int]:
    """pg8000's timedelta (normalised: 1 day 25:00 arrives as 2 days 01:00) or PGInterval."""
    if isinstance(value, timedelta):
        return {
            "months": 0,
            "days": value.days,
            "microseconds": value.seconds * 1_000_000 + value.microseconds,
        }
    years = (
        (value.millennia or 0) * 1000
        + (value.centuries or 0) * 100
        + (value.decades or 0) * 10
        + (value.years or 0)
    )
    hours, minutes = value.hours or 0, value.minutes or 0
    seconds, micros = value.seconds or 0, value.microseconds or 0
    return {
        "months": years * 12 + (value.months or 0),
        "days": (value.weeks or 0) * 7 + (value.days or 0),
        "microseconds": round(((hours * 60 + minutes) * 60 + seconds) * 1_000_000) + micros,
    }
