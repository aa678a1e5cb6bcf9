"""Dictionaries of rows to Parquet bytes (small results; the extract path streams)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def parquet_data(py_dict: Mapping[str, Any], schema: pa.Schema | None = None) -> io.BytesIO:
    """Parquet bytes of ``py_dict``, positioned at 0.

    ``py_dict`` is ``query_db``'s output: one key whose value is a list of row
    dictionaries. With ``schema`` (the table's catalog schema) the file is typed exactly
    as the streaming extract types it; without, types are inferred from the values.
    """
    rows = _rows_of(py_dict)
    table = pa.Table.from_pylist(list(rows), schema=schema)
    out_buffer = io.BytesIO()
    pq.write_table(table, out_buffer)
    out_buffer.seek(0)
    return out_buffer


def _rows_of(py_dict: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    values = list(py_dict.values())
    if len(values) == 1 and isinstance(values[0], list):
        return values[0]
    raise ValueError("expected query_db output: one key whose value is a list of rows")
