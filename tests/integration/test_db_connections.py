"""Secrets, connections and their failures: named errors, never a credential."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import REGION, SECRET_NAME
from totes_ingest.db_connections import (
    close_db_connection,
    connect_to_db,
    connection_settings,
    db_connections_get_secret,
    open_connection,
)
from totes_ingest.errors import SecretError, SourceError, SourceUnavailable

pytestmark = pytest.mark.integration

PASSWORD = "s3cr3t-Pa55word!"


def test_the_secret_is_returned_as_a_dictionary(db_secret: dict[str, Any]) -> None:
    client = boto3.client("secretsmanager", region_name=REGION)
    assert db_connections_get_secret(client, SECRET_NAME) == db_secret


def test_connect_to_db_returns_a_working_connection(db_secret: dict[str, Any]) -> None:
    conn = connect_to_db()
    try:
        assert conn.run("SELECT count(*) FROM currency") == [[0]]
    finally:
        close_db_connection(conn)


def test_closing_a_closed_connection_is_harmless(db_secret: dict[str, Any]) -> None:
    conn = connect_to_db()
    close_db_connection(conn)
    close_db_connection(conn)


def test_rds_managed_secret_keys_are_accepted() -> None:
    settings = connection_settings(
        {
            "username": "ingest",
            "password": PASSWORD,
            "dbname": "totesys",
            "host": "db.example",
            "port": "5432",
            "engine": "postgres",
        }
    )
    assert settings == {
        "user": "ingest",
        "password": PASSWORD,
        "database": "totesys",
        "host": "db.example",
        "port": 5432,
    }


def test_missing_keys_are_named_and_no_value_is_shown() -> None:
    with pytest.raises(SecretError) as raised:
        connection_settings({"password": PASSWORD, "port": 5432})
    message = str(raised.value)
    assert "user/username" in message
    assert "database/dbname" in message
    assert "host" in message
    assert PASSWORD not in message


def test_a_secret_that_is_not_json_fails_without_echoing_it(aws_env: None) -> None:
    client = boto3.client("secretsmanager", region_name=REGION)
    client.create_secret(Name="broken", SecretString=f"password={PASSWORD}")
    with pytest.raises(SecretError, match="not a JSON object") as raised:
        db_connections_get_secret(client, "broken")
    assert PASSWORD not in str(raised.value)
    assert PASSWORD not in repr(raised.value.__cause__)


def test_a_missing_secret_is_a_named_error(aws_env: None) -> None:
    client = boto3.client("secretsmanager", region_name=REGION)
    with pytest.raises(SecretError, match="ResourceNotFoundException"):
        db_connections_get_secret(client, "nope")


def test_an_unreachable_database_is_transient() -> None:
    settings = {"user": "u", "password": PASSWORD, "database": "d", "host": "127.0.0.1", "port": 1}
    with pytest.raises(SourceUnavailable) as raised:
        open_connection(settings)
    assert PASSWORD not in str(raised.value)


def test_a_missing_database_is_a_permanent_error(db_settings: dict[str, Any]) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        open_connection({**db_settings, "database": "no_such_database"})


def test_secret_json_round_trip_keeps_only_connection_keys(db_secret: dict[str, Any]) -> None:
    assert set(json.loads(json.dumps(db_secret))) >= {"user", "database"}


@pytest.fixture
def password_role(server_settings: dict[str, Any], conn: Any) -> Iterator[str]:
    """A role that must authenticate with a password (needs the embedded server's pg_hba)."""
    socket = server_settings.get("unix_sock")
    if not socket:
        pytest.skip("needs the embedded server, whose pg_hba.conf the test can edit")
    hba = Path(socket).parent / "pg_hba.conf"
    original = hba.read_text()
    conn.run("CREATE ROLE pw_user LOGIN PASSWORD 'right-Pa55word'")
    hba.write_text("local all pw_user scram-sha-256\n" + original)
    conn.run("SELECT pg_reload_conf()")
    try:
        yield "pw_user"
    finally:
        hba.write_text(original)
        conn.run("SELECT pg_reload_conf()")
        conn.run("DROP ROLE pw_user")


def test_a_wrong_password_is_a_permanent_error_that_never_shows_it(
    db_settings: dict[str, Any], password_role: str
) -> None:
    settings = {**db_settings, "user": password_role, "password": PASSWORD}
    with pytest.raises(SourceError, match="password authentication failed") as raised:
        open_connection(settings)
    assert PASSWORD not in str(raised.value)
    assert "right-Pa55word" not in str(raised.value)


def test_the_right_password_connects(db_settings: dict[str, Any], password_role: str) -> None:
    conn = open_connection({**db_settings, "user": password_role, "password": "right-Pa55word"})
    assert conn.run("SELECT current_user") == [[password_role]]
    close_db_connection(conn)
