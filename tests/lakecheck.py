"""Reading the lake back and comparing it with the database, for the tests."""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import BUCKET
from totes_ingest.generate_file_key import parse_file_key, parse_repair_key


def lake_keys(s3: Any, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return sorted(keys)


def table_files(s3: Any, table: str) -> list[str]:
    return [k for k in lake_keys(s3, f"{table}/") if parse_file_key(k)]


def repair_files(s3: Any, table: str) -> list[str]:
    """The audit's repair objects of ``table``: committed, but no links of its chain."""
    return [k for k in lake_keys(s3, f"{table}/") if (p := parse_repair_key(k)) and p[0] == table]


def data_files(s3: Any, table: str) -> list[str]:
    """Every object holding row versions of ``table``: its windows, then its repairs."""
    return table_files(s3, table) + repair_files(s3, table)


def read_file(s3: Any, key: str) -> pa.Table:
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return pq.read_table(io.BytesIO(body))


def read_table(s3: Any, table: str) -> list[dict[str, Any]]:
    """Every row version of ``table`` in the lake: its windows, oldest first, then the
    audit's repair objects."""
    rows: list[dict[str, Any]] = []
    for key in data_files(s3, table):
        rows.extend(read_file(s3, key).to_pylist())
    return rows


def database_rows(conn: Any, table: str) -> list[dict[str, Any]]:
    rows = conn.run(f'SELECT * FROM "{table}"')
    names = [c["name"] for c in conn.columns]
    return [dict(zip(names, row, strict=True)) for row in rows]


def same_value(lake: Any, db: Any) -> bool:
    """Equal, reading an unconstrained numeric's exact text as the Decimal it is."""
    if isinstance(db, Decimal) and isinstance(lake, str):
        return str(db) == lake
    return bool(lake == db) and type(lake) is type(db)


def mismatches(conn: Any, s3: Any, table: str) -> list[str]:
    """Rows whose current database version is not among the lake's versions of it, and
    lake rows the database has never had.

    The current version is looked up among all of a row's lake versions rather than taken
    to be the one with the greatest ``last_updated``: across a fall-back of the source's
    wall clock a later version can carry an earlier ``last_updated``.
    """
    key = f"{table}_id"
    versions: dict[Any, list[dict[str, Any]]] = {}
    for row in read_table(s3, table):
        versions.setdefault(row[key], []).append(row)
    db = {row[key]: row for row in database_rows(conn, table)}
    problems = [f"{table} {pk}: missing from the lake" for pk in db.keys() - versions.keys()]
    problems += [f"{table} {pk}: not in the database" for pk in versions.keys() - db.keys()]
    for pk in db.keys() & versions.keys():
        current = db[pk]
        if not any(
            all(same_value(version.get(column), value) for column, value in current.items())
            for version in versions[pk]
        ):
            newest = max(versions[pk], key=lambda v: v["last_updated"])
            differ = [c for c, v in current.items() if not same_value(newest.get(c), v)]
            problems.append(f"{table} {pk}: current version not in the lake (differs in {differ})")
    return problems


def duplicated_versions(s3: Any, table: str) -> list[tuple[Any, Any]]:
    seen: set[tuple[Any, Any]] = set()
    duplicates: list[tuple[Any, Any]] = []
    for row in read_table(s3, table):
        version = (row[f"{table}_id"], row["last_updated"])
        if version in seen:
            duplicates.append(version)
        seen.add(version)
    return duplicates
