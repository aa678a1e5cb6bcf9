"""Every engine the README promises reads the lake as one dataset, every value equal to
PostgreSQL's: the README's own snippets, run as printed, on a table of every supported
type ingested twice with a column added in between (``conftest.py``)."""

from __future__ import annotations

import glob
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pytest

from tests.readers.conftest import TABLE, Ingested

# One worker builds the lake and starts Spark once (make test: --dist loadgroup).
pytestmark = [pytest.mark.readers, pytest.mark.xdist_group("readers")]

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SNIPPETS = dict(re.findall(r"```python\n# reader: (\w+)[^\n]*\n(.*?)```", README, flags=re.DOTALL))


def _snippet(engine: str, lake: Path, **names: Any) -> Any:
    """Run the README's snippet for ``engine``; its ``result``."""
    namespace: dict[str, Any] = {"lake": str(lake), "table": TABLE, **names}
    exec(compile(SNIPPETS[engine], f"README.md ({engine})", "exec"), namespace)
    return namespace["result"]


def _value(column: str, value: Any) -> Any:
    """One engine's value in a form comparable with pg8000's (NaN made comparable)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else value
    if isinstance(value, Mapping) or hasattr(value, "asDict"):
        fields = value.asDict() if hasattr(value, "asDict") else value
        return [fields["months"], fields["days"], fields["microseconds"]]
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if hasattr(value, "to_pydatetime"):  # pandas' Timestamp
        value = value.to_pydatetime()
    if isinstance(value, datetime) and column == "instant":
        # Spark hands a timestamp to Python as a naive local time of this process.
        return value.astimezone(UTC)
    if isinstance(value, list | tuple) or hasattr(value, "tolist"):
        return [_value(column, item) for item in list(value)]
    return value


def _normalized(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [{c: _value(c, v) for c, v in row.items()} for row in rows]
    return sorted(out, key=lambda r: (r["every_type_id"], r["last_updated"]))


def _expected(ingested: Ingested) -> list[dict[str, Any]]:
    return _normalized(ingested.expected)


def _assert_equal(got: list[dict[str, Any]], ingested: Ingested) -> None:
    expected = _expected(ingested)
    assert [list(row) for row in got] == [list(row) for row in expected]  # columns, in order
    for seen, want in zip(got, expected, strict=True):
        assert seen == want, (seen["every_type_id"], seen["last_updated"])
    # Sanity: the comparison is not vacuous.
    assert len(expected) == 6
    assert {type(v) for v in expected[0].values()} >= {int, Decimal, str, datetime, bytes, list}


def test_every_engine_has_a_snippet_in_the_readme() -> None:
    assert set(SNIPPETS) == {"duckdb", "polars", "pandas", "spark"}


def test_duckdb_reads_every_version_and_the_added_column(ingested: Ingested) -> None:
    relation = _snippet("duckdb", ingested.lake)
    rows = [dict(zip(relation.columns, row, strict=True)) for row in relation.fetchall()]

    _assert_equal(_normalized(rows), ingested)


def test_polars_reads_every_version_and_the_added_column(ingested: Ingested) -> None:
    frame = _snippet("polars", ingested.lake)

    _assert_equal(_normalized(frame.to_dicts()), ingested)


def test_pandas_reads_every_version_and_the_added_column(ingested: Ingested) -> None:
    frame = _snippet("pandas", ingested.lake)
    rows = [{column: frame[column].iloc[i] for column in frame.columns} for i in range(len(frame))]

    _assert_equal(_normalized(rows), ingested)


def test_spark_reads_every_version_and_the_added_column(ingested: Ingested, spark: Any) -> None:
    frame = _snippet("spark", ingested.lake, spark=spark)

    _assert_equal(_normalized([row.asDict() for row in frame.collect()]), ingested)


def test_the_added_column_is_null_in_the_older_file(ingested: Ingested) -> None:
    rows = duckdb.sql(
        "SELECT every_type_id, parse_filename(filename), added FROM read_parquet("
        f"'{ingested.lake}/{TABLE}/*/*/*/*.parquet', union_by_name = true, filename = true)"
    ).fetchall()
    older, newer = (path.name for path in ingested.files)

    assert {added for _, name, added in rows if name == older} == {None}
    assert sorted((key, added) for key, name, added in rows if name == newer) == [
        (1, "new"),
        (4, None),
        (5, "five"),
    ]


# --- what each engine does without the option the README names ------------------------------


def test_without_union_by_name_duckdb_drops_the_added_column(ingested: Ingested) -> None:
    plain = duckdb.sql(f"SELECT * FROM read_parquet('{ingested.lake}/{TABLE}/*/*/*/*.parquet')")

    assert "added" not in plain.columns


def test_without_the_newest_schema_polars_raises(ingested: Ingested) -> None:
    import polars as pl

    with pytest.raises(pl.exceptions.SchemaError, match="extra column"):
        pl.read_parquet([str(path) for path in ingested.files])


def test_without_the_newest_schema_or_arrow_types_pandas_loses_data(ingested: Ingested) -> None:
    files = sorted(glob.glob(f"{ingested.lake}/{TABLE}/*/*/*/*.parquet"))
    frame = ds.dataset(files, format="parquet").to_table().to_pandas()

    assert "added" not in frame.columns
    assert str(frame["big"].dtype) == "float64"  # -2**63 survives; 2**63 - 1 does not
    assert int(frame["big"].max()) != 2**63 - 1


def test_without_recursive_lookup_spark_cannot_infer_a_schema(
    ingested: Ingested, spark: Any
) -> None:
    from pyspark.errors import AnalysisException

    with pytest.raises(AnalysisException, match="UNABLE_TO_INFER_SCHEMA"):
        spark.read.parquet(str(ingested.lake / TABLE))


def test_without_merge_schema_spark_drops_the_added_column(ingested: Ingested, spark: Any) -> None:
    frame = spark.read.option("recursiveFileLookup", "true").parquet(str(ingested.lake / TABLE))

    assert "added" not in frame.columns
    assert frame.count() == len(ingested.expected)


def test_the_local_duckdb_file_holds_the_current_state(ingested: Ingested) -> None:
    con = duckdb.connect(str(ingested.lake.parent / "lake.duckdb"), read_only=True)
    current = con.execute(f"SELECT every_type_id, body, added FROM {TABLE}_current ORDER BY 1")

    assert current.fetchall() == [
        (1, "edited", "new"),
        (2, "", None),
        (3, None, None),
        (4, None, None),
        (5, None, "five"),
    ]
    assert con.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == (6,)


def test_each_engine_types_the_columns_as_the_readme_says(ingested: Ingested, spark: Any) -> None:
    duck = _snippet("duckdb", ingested.lake)
    polars = _snippet("polars", ingested.lake)
    sparks = dict(_snippet("spark", ingested.lake, spark=spark).dtypes)
    duck_types = dict(zip(duck.columns, map(str, duck.types), strict=True))

    assert {c: duck_types[c] for c in ("wide_exact", "huge", "instant", "span")} == {
        "wide_exact": "DECIMAL(38,6)",
        "huge": "VARCHAR",  # never DOUBLE: the exact text
        "instant": "TIMESTAMP WITH TIME ZONE",
        "span": 'STRUCT("months" INTEGER, "days" INTEGER, "microseconds" BIGINT)',
    }
    assert str(polars.schema["wide_exact"]) == "Decimal(precision=38, scale=6)"
    assert str(polars.schema["ident"]) == "String"  # not 16 raw bytes
    assert {c: sparks[c] for c in ("wide_exact", "moment", "instant", "clock", "ident")} == {
        "wide_exact": "decimal(38,6)",
        "moment": "timestamp_ntz",
        "instant": "timestamp",
        "clock": "string",
        "ident": "string",
    }


def test_the_readmes_polars_current_state_is_the_views(ingested: Ingested) -> None:
    result, key = _snippet("polars", ingested.lake), "every_type_id"
    current = result.sort("last_updated").unique(subset=[key], keep="last")  # as in README
    con = duckdb.connect(str(ingested.lake.parent / "lake.duckdb"), read_only=True)
    view = con.execute(f"SELECT every_type_id, body, added FROM {TABLE}_current").fetchall()

    assert sorted(current.select(key, "body", "added").rows()) == sorted(view)
