"""The end bound comes from the database and never passes an open transaction."""

from __future__ import annotations

import time
from typing import Any

import pg8000.native
import pytest

from totes_ingest.local.dburl import Connect
from totes_ingest.window import commit_safe_end_time

pytestmark = pytest.mark.integration


def test_with_no_open_transaction_the_bound_is_the_database_clock(conn: Any) -> None:
    before = conn.run("SELECT clock_timestamp()::timestamp")[0][0]
    bound = commit_safe_end_time(conn, fallback_lag_seconds=300, safety_margin_seconds=0)
    after = conn.run("SELECT clock_timestamp()::timestamp")[0][0]
    assert before <= bound.end_time <= after
    assert not bound.held_back_by_open_transaction
    assert not bound.fallback_lag_used


def test_an_open_writing_transaction_holds_the_bound_at_its_start(
    conn: Any, db_settings: dict[str, Any], connect: Connect
) -> None:
    # GIVEN a writer that began a transaction (its now() is fixed) and has not committed
    conn.run("CREATE TABLE t (last_updated timestamp)")
    writer = connect(db_settings)
    writer.run("BEGIN")
    writer.run("INSERT INTO t VALUES (now())")
    started = writer.run("SELECT now()::timestamp")[0][0]
    time.sleep(0.05)
    # WHEN the run's end bound is computed
    bound = commit_safe_end_time(conn, fallback_lag_seconds=300, safety_margin_seconds=0)
    # THEN the uncommitted row is not below it, so the next window will include it
    assert bound.held_back_by_open_transaction
    assert bound.end_time == started
    writer.run("COMMIT")
    writer.close()


def test_sessions_of_the_ingest_itself_do_not_hold_the_bound(
    conn: Any, db_settings: dict[str, Any]
) -> None:
    other = pg8000.native.Connection(application_name="totes-ingest", **db_settings)
    other.run("BEGIN")
    other.run("SELECT 1")
    bound = commit_safe_end_time(conn, fallback_lag_seconds=300, safety_margin_seconds=0)
    assert not bound.held_back_by_open_transaction
    other.close()


def test_the_bound_trails_the_clock_by_the_safety_margin(conn: Any) -> None:
    before = conn.run("SELECT clock_timestamp()::timestamp")[0][0]
    bound = commit_safe_end_time(conn, fallback_lag_seconds=300, safety_margin_seconds=2)
    assert (bound.clock - bound.end_time).total_seconds() == 2
    assert bound.clock >= before


def test_when_other_sessions_are_hidden_the_bound_trails_by_the_fallback_lag(
    conn: Any, db_settings: dict[str, Any], connect: Connect
) -> None:
    # GIVEN an unprivileged ingest role that cannot see another role's session
    conn.run("CREATE ROLE hidden_app LOGIN")
    conn.run("CREATE ROLE plain_ingest LOGIN")
    app = connect({**db_settings, "user": "hidden_app"})
    app.run("BEGIN")
    app.run("SELECT 1")
    ingest = connect({**db_settings, "user": "plain_ingest"})
    try:
        clock = ingest.run("SELECT clock_timestamp()::timestamp")[0][0]
        bound = commit_safe_end_time(ingest, fallback_lag_seconds=120)
        assert bound.fallback_lag_used
        assert (clock - bound.end_time).total_seconds() == pytest.approx(120, abs=5)
    finally:
        ingest.close()
        app.close()
        conn.run("DROP ROLE plain_ingest")
        conn.run("DROP ROLE hidden_app")
