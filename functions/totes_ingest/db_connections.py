"""Connecting to ToteSys with credentials from AWS Secrets Manager.

A connection that fails says which server (host and port) and why: the name did not
resolve, nothing listens, no answer, TLS refused or not trusted, the login refused. It
never says the password.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
from typing import Any

import pg8000.native
from botocore.exceptions import BotoCoreError, ClientError

from totes_ingest import config
from totes_ingest.aws import error_code, secrets_client
from totes_ingest.db_errors import as_source_error
from totes_ingest.errors import SecretError, SourceError, SourceUnavailable
from totes_ingest.observability import tracer

APPLICATION_NAME = "totes-ingest"

# Each connection setting and the secret keys that may carry it: ours first, then the
# keys of an RDS-managed secret.
_KEYS: dict[str, tuple[str, ...]] = {
    "user": ("user", "username"),
    "password": ("password",),
    "database": ("database", "dbname"),
}
_OPTIONAL_KEYS: dict[str, tuple[str, ...]] = {
    "host": ("host",),
    "port": ("port",),
    "unix_sock": ("unix_sock",),
}
# PostgreSQL's SSLRequest: length 8, code 80877103; the server answers b"S" or b"N".
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
# getaddrinfo's "this name does not exist" (permanent), as opposed to "try again".
_NAME_UNKNOWN = frozenset(
    code for code in (getattr(socket, n, None) for n in ("EAI_NONAME", "EAI_NODATA")) if code
)
# The server ends a statement at statement_timeout; past this margin the socket is dead.
_READ_TIMEOUT_MARGIN_SECONDS = 30
_TRACED_SQL_CHARS = 2000


def db_connections_get_secret(client: Any, secret_name: str) -> dict[str, Any]:
    """Return the JSON object stored in ``secret_name``.

    Errors name the secret and what is wrong with it, never its contents.
    """
    try:
        response = client.get_secret_value(SecretId=secret_name)
    except ClientError as e:
        raise SecretError(f"cannot read secret {secret_name!r}: {error_code(e)}") from e
    except BotoCoreError as e:
        raise SourceUnavailable(f"cannot reach Secrets Manager: {type(e).__name__}") from e
    try:
        secret = json.loads(response["SecretString"])
    except (KeyError, TypeError, ValueError):
        raise SecretError(f"secret {secret_name!r} is not a JSON object") from None
    if not isinstance(secret, dict):
        raise SecretError(f"secret {secret_name!r} is not a JSON object")
    return secret


def _first(secret: dict[str, Any], keys: tuple[str, ...], *, allow_empty: bool = False) -> Any:
    """The value of the first of ``keys`` that is set in ``secret``."""
    for key in keys:
        value = secret.get(key)
        if value is not None and (value != "" or allow_empty):
            return value
    return None


def connection_settings(secret: dict[str, Any], secret_name: str = "the secret") -> dict[str, Any]:  # noqa: S107
    """pg8000 keyword arguments from a secret; names missing keys, never values."""
    settings: dict[str, Any] = {}
    missing: list[str] = []
    for setting, keys in _KEYS.items():
        # An empty password is allowed (trust authentication on a laptop); a missing one isn't.
        value = _first(secret, keys, allow_empty=setting == "password")
        if value is None:
            missing.append("/".join(keys))
        else:
            settings[setting] = str(value)
    for setting, keys in _OPTIONAL_KEYS.items():
        value = _first(secret, keys)
        if value is not None:
            settings[setting] = value
    if "host" not in settings and "unix_sock" not in settings:
        missing.append("host")
    if missing:
        raise SecretError(f"{secret_name!r} lacks required keys: {', '.join(missing)}")
    if "port" in settings:
        try:
            settings["port"] = int(settings["port"])
        except (TypeError, ValueError):
            raise SecretError(f"{secret_name!r} has a non-numeric port") from None
    return settings


def ssl_context(mode: str, root_cert: str | None = None) -> ssl.SSLContext | None:
    """libpq-style modes: ``disable``, ``require`` (encrypted), ``verify-full``.

    ``verify-full`` checks the certificate chain and the host name against ``root_cert``
    (a PEM bundle, such as RDS's global bundle) when given, else the system's CAs.
    """
    if mode == "disable":
        return None
    if mode == "require":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        return ssl.create_default_context(cafile=root_cert)
    except (OSError, ssl.SSLError) as e:
        raise SourceError(f"cannot load the CA bundle {root_cert}: {_reason(e)}") from e


def open_connection(
    settings: dict[str, Any],
    ssl_mode: str = "disable",
    *,
    root_cert: str | None = None,
    connect_timeout: float = config.DEFAULT_CONNECT_TIMEOUT_SECONDS,
) -> pg8000.native.Connection:
    """Connect with explicit settings; failures become SourceUnavailable or SourceError.

    The socket and the TLS handshake are ours, so each failure names the server and the
    step that failed: the host name, the TCP connection, TLS, or the login. A connection
    that works gets a read timeout just above the statement timeout (the server ends any
    longer statement), never the connect timeout.
    """
    where = _address(settings)
    context = None if "unix_sock" in settings else ssl_context(ssl_mode, root_cert)
    sock = _open_socket(settings, where, connect_timeout)
    try:
        if context is not None:
            sock = _start_tls(sock, settings["host"], context, where)
        conn = _login(sock, settings, where, connect_timeout)
    except BaseException:
        sock.close()
        raise
    sock.settimeout(config.statement_timeout_ms() / 1000 + _READ_TIMEOUT_MARGIN_SECONDS)
    return conn


def _address(settings: dict[str, Any]) -> str:
    if "unix_sock" in settings:
        return str(settings["unix_sock"])
    return f"{settings['host']}:{settings.get('port', 5432)}"


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return str(error.verify_message)
    if isinstance(error, ssl.SSLError):
        return str(error.reason or error)
    return str(getattr(error, "strerror", None) or error or type(error).__name__)


def _unreachable(where: str, why: str) -> SourceUnavailable:
    return SourceUnavailable(f"cannot connect to the database at {where}: {why}")


def _open_socket(settings: dict[str, Any], where: str, timeout: float) -> socket.socket:
    if "unix_sock" in settings:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(settings["unix_sock"])
        except OSError as e:
            sock.close()
            raise _unreachable(where, _reason(e)) from e
        return sock
    host, port = settings["host"], int(settings.get("port", 5432))
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as e:
        kind = SourceError if e.errno in _NAME_UNKNOWN else SourceUnavailable
        raise kind(
            f"cannot connect to the database at {where}: host name {host!r} not resolved "
            f"(DNS: {e.strerror})"
        ) from e
    except ConnectionRefusedError as e:
        raise _unreachable(where, "connection refused (nothing listens on that port)") from e
    except TimeoutError as e:
        raise _unreachable(where, f"timed out after {timeout:g} s (no answer to connect)") from e
    except OSError as e:
        raise _unreachable(where, _reason(e)) from e
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return sock


def _start_tls(
    sock: socket.socket, host: str, context: ssl.SSLContext, where: str
) -> socket.socket:
    """PostgreSQL's SSLRequest, then the TLS handshake on the same socket."""
    try:
        sock.sendall(_SSL_REQUEST)
        answer = sock.recv(1)
    except TimeoutError as e:
        raise _unreachable(
            where, f"timed out after {sock.gettimeout():g} s waiting for the TLS answer"
        ) from e
    except OSError as e:
        raise _unreachable(where, f"connection lost asking for TLS: {_reason(e)}") from e
    if answer == b"N":
        raise SourceError(f"TLS to the database at {where} failed: the server does not offer TLS")
    if answer != b"S":
        raise _unreachable(where, "not a PostgreSQL server (unexpected answer to the TLS request)")
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as e:
        raise SourceError(
            f"TLS to the database at {where} failed: certificate not trusted ({_reason(e)})"
        ) from e
    except ssl.SSLError as e:
        raise SourceError(f"TLS to the database at {where} failed: {_reason(e)}") from e
    except TimeoutError as e:
        raise _unreachable(where, f"timed out after {sock.gettimeout():g} s in TLS") from e
    except OSError as e:
        raise _unreachable(where, f"connection lost in TLS: {_reason(e)}") from e


def _login(
    sock: socket.socket, settings: dict[str, Any], where: str, timeout: float
) -> pg8000.native.Connection:
    """The startup message and authentication on ``sock``, then the session's settings."""
    kwargs = {k: v for k, v in settings.items() if k not in ("host", "port", "unix_sock")}
    action = f"login to {where} as {settings.get('user')!r}"
    try:
        conn = TracedConnection(
            sock=sock, ssl_context=False, application_name=APPLICATION_NAME, **kwargs
        )
        conn.run(f"SET statement_timeout = {int(config.statement_timeout_ms())}")
    except pg8000.exceptions.DatabaseError as e:
        raise as_source_error(e, action) from e
    except (pg8000.exceptions.InterfaceError, OSError) as e:
        # A server that refuses the login (FATAL) closes the socket; pg8000 may then
        # report the broken pipe, with the server's reason as its context.
        refusal = _database_error_in(e)
        if refusal is not None:
            raise as_source_error(refusal, action) from e
        if _timed_out(e):
            raise _unreachable(where, f"timed out after {timeout:g} s waiting for the login") from e
        raise SourceUnavailable(
            f"database {action} failed: {_without(settings.get('password'), _reason(e))}"
        ) from e
    return conn


def _timed_out(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _without(secret: object, message: str) -> str:
    """``message`` with any occurrence of ``secret`` masked (a belt to the braces)."""
    return message.replace(secret, "***") if isinstance(secret, str) and secret else message


class TracedConnection(pg8000.native.Connection):  # type: ignore[misc]
    """pg8000's native connection, each statement (query or COPY) an X-Ray subsegment.

    Every query of the library goes through ``run``, so a slow source shows in the trace
    as the statement that was slow; the subsegment records the statement's verb and its
    row count (the SQL holds table names and window bounds, never data or credentials).
    """

    def run(self, sql: str, stream: Any = None, types: Any = None, **params: Any) -> Any:
        if not tracer.in_use():  # no subsegment, and no X-Ray SDK imported for none
            return super().run(sql, stream=stream, types=types, **params)
        verb = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "EMPTY"
        with tracer.provider.in_subsegment(name=f"## totesys {verb}") as subsegment:
            subsegment.put_annotation("db_statement", verb)
            subsegment.put_metadata("sql", sql[:_TRACED_SQL_CHARS], namespace="totesys")
            rows = super().run(sql, stream=stream, types=types, **params)
            subsegment.put_metadata("row_count", self.row_count, namespace="totesys")
            return rows


def _database_error_in(error: BaseException) -> pg8000.exceptions.DatabaseError | None:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, pg8000.exceptions.DatabaseError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def connect_to_db() -> pg8000.native.Connection:
    """An authenticated pg8000 native connection to ToteSys.

    The secret's name comes from ``DB_SECRET_NAME``; TLS follows ``DB_SSL_MODE``
    (``require`` unless configured otherwise), verified against ``DB_SSL_ROOT_CERT``.
    """
    name = config.db_secret_name()
    secret = db_connections_get_secret(secrets_client(), name)
    return open_connection(
        connection_settings(secret, name),
        config.ssl_mode(),
        root_cert=config.ssl_root_cert(),
        connect_timeout=config.connect_timeout_seconds(),
    )


def close_db_connection(conn: pg8000.native.Connection) -> None:
    """Close ``conn``; a connection that is already gone is not an error."""
    with contextlib.suppress(pg8000.exceptions.InterfaceError, OSError):
        conn.close()
