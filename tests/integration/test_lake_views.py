"""The ``<table>_current`` view's SQL, run by DuckDB on Parquet files and tombstones
written in the lake's layout (the very text Athena stores in Glue)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from totes_ingest.lake_views import (
    TableColumns,
    current_view_sql,
    duckdb_statements,
    parse_presto_view_text,
    presto_type,
    presto_view_text,
)

pytestmark = pytest.mark.integration

COLUMNS = TableColumns(
    "item",
    (("item_id", "int"), ("name", "string"), ("last_updated", "timestamp")),
    ("item_id",),
)
SCHEMA = pa.schema(
    [("item_id", pa.int32()), ("name", pa.string()), ("last_updated", pa.timestamp("us"))]
)
TOMBSTONES = pa.schema(
    [
        ("item_id", pa.int32()),
        ("deleted_at", pa.timestamp("us", tz="UTC")),
        ("last_version", pa.timestamp("us")),
    ]
)


def _at(day: int, hour: int = 0) -> datetime:
    return datetime(2024, 1, day, hour)


def _write(lake: Path, key: str, rows: list[dict[str, object]], schema: pa.Schema) -> None:
    path = lake / key
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _current(lake: Path, tombstones: bool) -> list[tuple[object, ...]]:
    con = duckdb.connect()
    for statement in duckdb_statements(str(lake), COLUMNS, tombstones):
        con.execute(statement)
    return con.execute('SELECT * FROM "item_current" ORDER BY item_id').fetchall()


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    """Two windows of ``item``: 1 and 2 inserted, then 2 updated and 3 inserted."""
    _write(
        tmp_path,
        "item/2024/01/01/000000000000.parquet",
        [
            {"item_id": 1, "name": "one", "last_updated": _at(1)},
            {"item_id": 2, "name": "two", "last_updated": _at(1)},
        ],
        SCHEMA,
    )
    _write(
        tmp_path,
        "item/2024/01/02/000000000000.parquet",
        [
            {"item_id": 2, "name": "two, edited", "last_updated": _at(2)},
            {"item_id": 3, "name": "three", "last_updated": _at(2)},
        ],
        SCHEMA,
    )
    return tmp_path


def test_the_current_view_holds_each_keys_newest_version(lake: Path) -> None:
    assert _current(lake, tombstones=False) == [
        (1, "one", _at(1)),
        (2, "two, edited", _at(2)),
        (3, "three", _at(2)),
    ]


def test_without_tombstone_files_the_tombstones_are_an_empty_relation_of_their_schema(
    lake: Path,
) -> None:
    con = duckdb.connect()
    for statement in duckdb_statements(str(lake), COLUMNS, tombstone_files=False):
        con.execute(statement)
    described = con.execute('DESCRIBE "item_tombstones"').fetchall()
    assert [(row[0], row[1]) for row in described] == [
        ("item_id", "INTEGER"),
        ("deleted_at", "TIMESTAMP WITH TIME ZONE"),
        ("last_version", "TIMESTAMP"),
    ]
    assert con.execute('SELECT count(*) FROM "item_tombstones"').fetchall() == [(0,)]


def test_a_tombstoned_key_leaves_the_current_view_unless_reinserted_later(lake: Path) -> None:
    # GIVEN tombstones for 1 (at its newest version), 2 (at an older version: the key was
    # edited after the audit saw it gone, so it is current again) and 3 (two audits)
    deleted = datetime(2024, 1, 3, tzinfo=UTC)
    _write(
        lake,
        "_tombstones/item/2024/01/03/000000000000.parquet",
        [
            {"item_id": 1, "deleted_at": deleted, "last_version": _at(1)},
            {"item_id": 2, "deleted_at": deleted, "last_version": _at(1)},
            {"item_id": 3, "deleted_at": deleted, "last_version": _at(1)},
        ],
        TOMBSTONES,
    )
    _write(
        lake,
        "_tombstones/item/2024/01/04/000000000000.parquet",
        [{"item_id": 3, "deleted_at": deleted, "last_version": _at(2)}],
        TOMBSTONES,
    )
    # THEN only 2 is current
    assert _current(lake, tombstones=True) == [(2, "two, edited", _at(2))]


def test_the_view_lists_its_columns_and_joins_on_every_key_column() -> None:
    columns = TableColumns(
        "pair",
        (("a", "int"), ("b", "string"), ("v", "string"), ("last_updated", "timestamp")),
        ("a", "b"),
    )
    sql = current_view_sql(columns)
    assert "*" not in sql
    assert 'PARTITION BY "a", "b"' in sql
    assert 'd."a" = v."a" AND d."b" = v."b"' in sql


def test_a_table_without_a_key_has_no_current_view() -> None:
    columns = TableColumns("log", (("line", "string"), ("last_updated", "timestamp")), ())
    assert len(duckdb_statements("/lake", columns, tombstone_files=False)) == 1
    with pytest.raises(ValueError, match="no primary key"):
        current_view_sql(columns)


@pytest.mark.parametrize(
    ("hive", "presto"),
    [
        ("int", "integer"),
        ("string", "varchar"),
        ("float", "real"),
        ("binary", "varbinary"),
        ("decimal(10,2)", "decimal(10,2)"),
        ("array<string>", "array(varchar)"),
        (
            "struct<months:int,days:int,microseconds:bigint>",
            "row(months integer, days integer, microseconds bigint)",
        ),
        ("array<struct<a:int,b:array<string>>>", "array(row(a integer, b array(varchar)))"),
    ],
)
def test_glue_types_become_presto_types_in_the_views_columns(hive: str, presto: str) -> None:
    assert presto_type(hive) == presto


def test_the_presto_view_text_holds_the_sql_catalog_schema_and_columns() -> None:
    sql = current_view_sql(COLUMNS)
    body = parse_presto_view_text(presto_view_text(sql, "awsdatacatalog", "lake", COLUMNS))
    assert body == {
        "originalSql": sql,
        "catalog": "awsdatacatalog",
        "schema": "lake",
        "columns": [
            {"name": "item_id", "type": "integer"},
            {"name": "name", "type": "varchar"},
            {"name": "last_updated", "type": "timestamp"},
        ],
    }
