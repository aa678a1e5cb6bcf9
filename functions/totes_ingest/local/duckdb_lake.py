"""The local lake as a DuckDB database file: the same raw, tombstones and ``_current``
views as Athena's, from the same SQL generator (``lake_views``), over ``./lake``.

``totes-ingest run`` rebuilds it after every run, beside the lake folder
(``./lake.duckdb`` for ``./lake``), which ``totes-ingest sql`` opens (see the README,
"Reading the lake"). The
views read the lake's files when queried, by absolute path, so the file stays current
until a table gains a column (the next run rewrites the views).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from totes_ingest.lake_views import TOMBSTONES_PREFIX, TableColumns, duckdb_statements
from totes_ingest.source import CURSOR_COLUMN


def database_path(lake: Path) -> Path:
    """Where the DuckDB file of the lake folder ``lake`` lives: beside it."""
    return lake.parent / f"{lake.name}.duckdb"


def lake_tables(lake: Path) -> list[str]:
    """The tables holding at least one committed file (``<table>/yyyy/mm/dd/*.parquet``)."""
    return sorted(
        child.name
        for child in lake.iterdir()
        if child.is_dir()
        and not child.name.startswith(("_", "."))
        and next(child.glob("*/*/*/*.parquet"), None) is not None
    )


def build(lake: Path, keys: Mapping[str, Iterable[str]], database: Path | None = None) -> Path:
    """(Re)create the DuckDB file of ``lake``: for each table with files, its views.

    ``keys`` gives each table's primary key columns (from the source); a table missing
    from it, or with no key, gets the raw view only. Returns the file's path.
    """
    import duckdb  # here: only the local CLI needs it

    target = database or database_path(lake)
    root = str(lake.resolve())
    partial = target.with_name(target.name + ".tmp")
    partial.unlink(missing_ok=True)
    con = duckdb.connect(str(partial))
    try:
        for table in lake_tables(lake):
            key = tuple(keys.get(table, ()))
            raw = TableColumns(table, (), (), CURSOR_COLUMN)
            con.execute(duckdb_statements(root, raw, tombstone_files=False)[0])
            described = con.execute(f'DESCRIBE "{table}"').fetchall()
            columns = TableColumns(
                table, tuple((row[0], str(row[1])) for row in described), key, CURSOR_COLUMN
            )
            tombstones = lake / TOMBSTONES_PREFIX / table
            has_tombstones = next(tombstones.glob("*/*/*/*.parquet"), None) is not None
            for statement in duckdb_statements(root, columns, has_tombstones)[1:]:
                con.execute(statement)
    finally:
        con.close()
    partial.replace(target)
    return target
