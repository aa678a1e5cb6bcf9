"""The COPY stream's framing: every row arrives exactly, whatever its bytes.

The extract takes CopyData messages in bulk, finding them after line breaks; these
tests feed it rows built to confuse that: lengths whose bytes equal a line break or
spell ``\\nd``, values with line breaks followed by ``d``, carriage returns, rows larger
than the socket buffer, all through the real protocol.
"""

from __future__ import annotations

from pathlib import Path

import pg8000.native
import pyarrow.parquet as pq
import pytest

from totes_ingest.extract import extract_to_parquet

pytestmark = pytest.mark.integration

END = "2030-01-01 00:00:00"


def _rows_round_trip(conn: pg8000.native.Connection, tmp_path: Path, values_sql: str) -> None:
    """Extract ``t`` (id, v) filled by ``values_sql`` and compare every row with the DB."""
    conn.run("CREATE TABLE t (id int, v text, last_updated timestamp DEFAULT '2024-01-01')")
    conn.run(f"INSERT INTO t (id, v) {values_sql}")
    result = extract_to_parquet(conn, "t", None, END, tmp_path / "t.parquet")
    table = pq.read_table(tmp_path / "t.parquet")
    expected = dict(conn.run("SELECT id, v FROM t"))
    assert result.rows == len(expected)
    assert {row["id"]: row["v"] for row in table.to_pylist()} == expected


def test_rows_of_every_length_up_to_three_kilobytes_arrive_exactly(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    # every value of a message length's low bytes, 0x0a and 0x0a64 ("\nd") among them
    _rows_round_trip(conn, tmp_path, "SELECT n, repeat('x', n) FROM generate_series(0, 3000) n")


def test_line_breaks_followed_by_d_inside_values_arrive_exactly(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    _rows_round_trip(
        conn,
        tmp_path,
        "SELECT n, 'a' || repeat(chr(10) || 'd', n % 4) || repeat(chr(13), n % 3) || 'd'"
        " FROM generate_series(1, 20000) n",
    )


def test_rows_larger_than_the_socket_buffer_arrive_exactly(
    conn: pg8000.native.Connection, tmp_path: Path
) -> None:
    _rows_round_trip(
        conn, tmp_path, "SELECT n, repeat(chr(10) || 'd,', n * 50000) FROM generate_series(1, 12) n"
    )


def test_many_short_rows_arrive_exactly(conn: pg8000.native.Connection, tmp_path: Path) -> None:
    _rows_round_trip(conn, tmp_path, "SELECT n, NULL FROM generate_series(1, 100000) n")
