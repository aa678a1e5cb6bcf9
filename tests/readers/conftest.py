"""The reader compatibility suite's fixtures: one table of every supported type, ingested
twice by ``totes-ingest run`` with a column added in between, and a local Spark session."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.command import database_url, totes_ingest
from totes_ingest.local.dburl import Connect, with_database

TABLE = "every_type"

COLUMNS = """
    every_type_id serial PRIMARY KEY,
    small smallint, whole integer, big bigint, oid_value oid,
    money_like numeric(10, 2), wide_exact numeric(38, 6), huge numeric(50, 10), free numeric,
    single real, double_value double precision, flag boolean,
    body text, label varchar(20), code char(5),
    day date, moment timestamp, instant timestamptz, clock time, clock_tz timetz, span interval,
    ident uuid, doc json, docb jsonb, raw bytea, tags text[], counts integer[],
    last_updated timestamp NOT NULL DEFAULT now()
"""

# Extremes, the values readers get wrong (NaN, infinities, 24:00:00, the nil uuid, empty
# strings, arrays and bytes, text that needs quoting) and a row of NULLs.
ROWS = [
    """-32768, -2147483648, -9223372036854775808, 0,
    -99999999.99, -99999999999999999999999999999999.999999,
    '-1234567890123456789012345678901234567890.0123456789', 'NaN', 'NaN', '-Infinity', false,
    E'two\\nlines, "quoted" \\\\N', 'O''Keefe', 'ab', '0001-01-01', '1970-01-01 00:00:00',
    '2024-03-31 01:30:00+00', '00:00:00', '23:59:59.999999-05:30',
    '-1 year 2 mons -3 days 04:05:06.000007', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '{"b": 1, "a": [1, 2]}', '{"b": 1, "a": [1, 2]}', '\\x00ff10',
    ARRAY['x', NULL, 'Zoë 東京'], ARRAY[1, NULL, -3]""",
    """32767, 2147483647, 9223372036854775807, 4294967295,
    12345678.90, 99999999999999999999999999999999.999999,
    '1.5', '3.14159265358979323846264338327950288419716939937510', 3.4028235e38,
    1.7976931348623157e308, true, '', '', '     ', '9999-12-31', '9999-12-31 23:59:59.999999',
    '1999-12-31 23:59:59.999999+14', '24:00:00', '12:00:00+14', '0',
    '00000000-0000-0000-0000-000000000000', 'null', '[]', '', ARRAY[]::text[],
    ARRAY[]::integer[]""",
    ", ".join(["NULL"] * 26),
]
NAMES = (
    "small, whole, big, oid_value, money_like, wide_exact, huge, free, single, double_value, "
    "flag, body, label, code, day, moment, instant, clock, clock_tz, span, ident, doc, docb, "
    "raw, tags, counts"
)

# What the lake promises for each column, computed by PostgreSQL itself: the portable
# mapping's value (README "Extract engine"), so that every engine is compared with the
# source, not with another reader.
EXPECTED = """
SELECT every_type_id, small, whole, big, oid_value::bigint AS oid_value, money_like,
    wide_exact, huge::text AS huge, free::text AS free, single::float8 AS single,
    double_value, flag, body, label, code, day, moment, instant,
    to_char(clock, 'HH24:MI:SS.US') AS clock,
    to_char(clock_tz::time, 'HH24:MI:SS.US')
        || CASE WHEN extract(timezone FROM clock_tz) < 0 THEN '-' ELSE '+' END
        || to_char(make_interval(secs => abs(extract(timezone FROM clock_tz))), 'HH24:MI')
        AS clock_tz,
    CASE WHEN span IS NOT NULL THEN ARRAY[
        (extract(year FROM span) * 12 + extract(month FROM span))::bigint,
        extract(day FROM span)::bigint,
        ((extract(hour FROM span) * 60 + extract(minute FROM span)) * 60000000
            + extract(microseconds FROM span))::bigint] END AS span,
    ident::text AS ident, doc::text AS doc, docb::text AS docb, raw, tags, counts,
    last_updated, {added}
FROM every_type {where} ORDER BY every_type_id
"""


@dataclass(frozen=True)
class Ingested:
    """The lake two runs wrote, and the row versions PostgreSQL says it must hold."""

    lake: Path
    files: list[Path]
    expected: list[dict[str, Any]]
    first_window_ids: set[int]


def _rows(conn: Any, sql: str) -> list[dict[str, Any]]:
    rows = conn.run(sql)
    names = [column["name"] for column in conn.columns]
    return [dict(zip(names, row, strict=True)) for row in rows]


def _run(url: str, lake: Path, cwd: Path) -> None:
    process = totes_ingest(
        "run", "--database-url", url, "--lake", str(lake), "--tables", TABLE, "--json", cwd=cwd
    )
    assert process.returncode == 0, process.stderr
    assert TABLE in process.stdout


@pytest.fixture(scope="session")
def ingested(
    server_settings: dict[str, Any], connect: Connect, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ingested]:
    """Window 1: three rows. Then ``added`` is added, row 1 updated and rows 4 and 5
    inserted. Window 2: those three versions."""
    name = f"totes_readers_{uuid.uuid4().hex[:12]}"
    admin = connect(server_settings)
    admin.run(f'CREATE DATABASE "{name}"')
    settings = with_database(server_settings, name)
    conn = connect(settings)
    cwd = tmp_path_factory.mktemp("readers")
    lake, url = cwd / "lake", database_url(settings)
    try:
        conn.run(f"CREATE TABLE {TABLE} ({COLUMNS})")
        for row in ROWS:
            conn.run(f"INSERT INTO {TABLE} ({NAMES}) VALUES ({row})")
        first = _rows(conn, EXPECTED.format(added="NULL::text AS added", where=""))
        _run(url, lake, cwd)

        conn.run(f"ALTER TABLE {TABLE} ADD COLUMN added text")
        conn.run(
            f"UPDATE {TABLE} SET body = 'edited', added = 'new', last_updated = now()"
            " WHERE every_type_id = 1"
        )
        conn.run(f"INSERT INTO {TABLE} (whole, added) VALUES (4, NULL), (5, 'five')")
        second = _rows(
            conn, EXPECTED.format(added="added", where="WHERE every_type_id IN (1, 4, 5)")
        )
        _run(url, lake, cwd)

        files = sorted(lake.glob(f"{TABLE}/*/*/*/*.parquet"))
        assert len(files) == 2
        yield Ingested(lake, files, first + second, {row["every_type_id"] for row in first})
    finally:
        conn.close()
        admin.run(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = :name AND pid <> pg_backend_pid()",
            name=name,
        )
        admin.run(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """A one-core local Spark, UTC session time zone, no UI. PySpark brings no Java: without
    one (``JAVA_HOME`` or ``java`` on the PATH) the Spark tests are skipped, saying so."""
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        pytest.skip("Spark needs a Java 17 or 21 runtime: none on the PATH, no JAVA_HOME")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("totes-ingest-readers")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "512m")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
