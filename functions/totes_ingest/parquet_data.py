"""Dictionaries of rows to Parquet bytes (small results; the extract path streams).

With a table's catalog schema (``catalog.table_schema``) the file has exactly the
schema the streaming extract gives the same table; pg8000's Python values are brought
to that mapping by ``pg_types.conform``: an unconstrained numeric becomes its exact
decimal text, json is serialised back to text, an interval becomes its (months, days,
microseconds) struct.
pg8000 parses json and normalises intervals before they reach us, so for those two
types the values (not the schema) may differ from the streaming path's, which keeps
the server's own text and fields: use the streaming extract for anything but look-ups.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from totes_ingest.pg_types import conform


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
        table = pa.Table.from_pylist(conform(rows, schema), schema=schema)
    out_buffer = io.BytesIO()
    pq.write_table(table, out_buffer)
    out_buffer.seek(0)
    return out_buffer


def _rows_of(py_dict: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    values = list(py_dict.values())
    if len(values) == 1 and isinstance(values[0], list):
        return values[0]
    raise ValueError("expected query_db output: one key whose value is a list of rows")
