"""Secrets, connections and their failures: named errors, never a credential."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import REGION, SECRET_NAME
from tests.integration.tls_cluster import TlsCluster, free_port, start_tls_cluster
from totes_ingest import config
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


# -- why a connection fails: each cause against a real socket or server ----------------


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    return free_port()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@pytest.fixture
def server_without_tls() -> Iterator[int]:
    """A port that answers PostgreSQL's SSLRequest with "N", as a server with ssl=off does."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        with contextlib.suppress(OSError):
            peer, _ = listener.accept()
            with peer:
                peer.recv(8)
                peer.sendall(b"N")
                peer.recv(1024)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[TlsCluster]:
    yield from start_tls_cluster()


def tcp_settings(host: str, port: int) -> dict[str, Any]:
    return {"user": "u", "password": PASSWORD, "database": "d", "host": host, "port": port}


def test_a_closed_port_names_the_server_and_says_refused() -> None:
    port = closed_port()

    with pytest.raises(SourceUnavailable) as raised:
        open_connection(tcp_settings("127.0.0.1", port), "require")

    assert f"127.0.0.1:{port}" in str(raised.value)
    assert "connection refused" in str(raised.value)
    assert PASSWORD not in str(raised.value)


def test_an_unresolvable_host_name_is_named_as_not_resolved() -> None:
    with pytest.raises((SourceError, SourceUnavailable)) as raised:
        open_connection(tcp_settings("nonexistent.invalid", 5432), "require")

    assert "nonexistent.invalid:5432" in str(raised.value)
    assert "not resolved" in str(raised.value)
    assert PASSWORD not in str(raised.value)


@pytest.mark.parametrize("mode", ["require", "disable"])
def test_a_server_that_never_answers_times_out_after_the_connect_timeout(
    silent_server: int, mode: str
) -> None:
    started = time.monotonic()

    with pytest.raises(SourceUnavailable, match=r"timed out after 0\.5 s") as raised:
        open_connection(tcp_settings("127.0.0.1", silent_server), mode, connect_timeout=0.5)

    assert time.monotonic() - started < 5
    assert f"127.0.0.1:{silent_server}" in str(raised.value)


def test_a_server_without_tls_is_refused_when_tls_is_required(server_without_tls: int) -> None:
    with pytest.raises(SourceError, match="does not offer TLS") as raised:
        open_connection(tcp_settings("127.0.0.1", server_without_tls), "require")

    assert f"127.0.0.1:{server_without_tls}" in str(raised.value)


def test_a_long_statement_is_not_cut_by_the_connect_timeout(db_settings: dict[str, Any]) -> None:
    conn = open_connection(db_settings, connect_timeout=0.5)
    try:
        assert conn.run("SELECT pg_sleep(1.0), 1")[0][1] == 1
    finally:
        close_db_connection(conn)


# -- verified TLS --------------------------------------------------------------------


def encrypted(conn: Any) -> bool:
    ((ssl,),) = conn.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    return bool(ssl)


def test_verify_full_connects_to_a_server_whose_certificate_chains_to_the_bundle(
    tls_cluster: TlsCluster,
) -> None:
    conn = open_connection(
        tls_cluster.settings(), "verify-full", root_cert=str(tls_cluster.ca_bundle)
    )
    try:
        assert encrypted(conn)
    finally:
        close_db_connection(conn)


def test_verify_full_refuses_a_certificate_from_another_ca(tls_cluster: TlsCluster) -> None:
    with pytest.raises(SourceError, match="certificate not trusted") as raised:
        open_connection(
            tls_cluster.settings(), "verify-full", root_cert=str(tls_cluster.other_ca_bundle)
        )

    assert f"localhost:{tls_cluster.port}" in str(raised.value)
    assert "unable to get local issuer certificate" in str(raised.value)


def test_verify_full_refuses_a_host_name_the_certificate_does_not_name(
    tls_cluster: TlsCluster,
) -> None:
    with pytest.raises(SourceError, match="certificate not trusted") as raised:
        open_connection(
            tls_cluster.settings("127.0.0.1"), "verify-full", root_cert=str(tls_cluster.ca_bundle)
        )

    assert "mismatch" in str(raised.value)


def test_verify_full_without_a_bundle_refuses_a_private_ca(tls_cluster: TlsCluster) -> None:
    # An RDS certificate against the system's CAs: the reason the bundle is configurable.
    with pytest.raises(SourceError, match="certificate not trusted"):
        open_connection(tls_cluster.settings(), "verify-full")


def test_require_encrypts_without_checking_the_certificate(tls_cluster: TlsCluster) -> None:
    conn = open_connection(tls_cluster.settings("127.0.0.1"), "require")
    try:
        assert encrypted(conn)
    finally:
        close_db_connection(conn)


def test_a_wrong_password_over_tls_names_the_server_and_user_never_the_password(
    tls_cluster: TlsCluster,
) -> None:
    settings = tls_cluster.settings(password=PASSWORD)

    with pytest.raises(SourceError, match="password authentication failed") as raised:
        open_connection(settings, "verify-full", root_cert=str(tls_cluster.ca_bundle))

    assert f"login to localhost:{tls_cluster.port} as 'ingest'" in str(raised.value)
    assert PASSWORD not in str(raised.value)
    assert tls_cluster.settings()["password"] not in str(raised.value)


def test_a_missing_ca_bundle_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "rds-global-bundle.pem"

    with pytest.raises(SourceError, match="cannot load the CA bundle") as raised:
        open_connection(
            tcp_settings("127.0.0.1", closed_port()), "verify-full", root_cert=str(missing)
        )

    assert str(missing) in str(raised.value)


def test_connect_to_db_verifies_against_the_bundle_db_ssl_root_cert_names(
    aws_env: None, tls_cluster: TlsCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = boto3.client("secretsmanager", region_name=REGION)
    client.create_secret(Name=SECRET_NAME, SecretString=json.dumps(tls_cluster.settings()))
    monkeypatch.setenv(config.DB_SECRET_NAME, SECRET_NAME)
    monkeypatch.setenv(config.DB_SSL_MODE, "verify-full")
    monkeypatch.setenv(config.DB_SSL_ROOT_CERT, str(tls_cluster.ca_bundle))

    conn = connect_to_db()
    try:
        assert encrypted(conn)
    finally:
        close_db_connection(conn)


def test_a_relative_bundle_path_is_read_from_the_code_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(config.DB_SSL_ROOT_CERT, "certs/rds-global-bundle.pem")

    assert config.ssl_root_cert() == str(config.CODE_ROOT / "certs" / "rds-global-bundle.pem")
