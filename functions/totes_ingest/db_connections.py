"""Connecting to ToteSys with credentials from AWS Secrets Manager."""

from __future__ import annotations

import contextlib
import json
import ssl
from typing import Any

import pg8000.native
from botocore.exceptions import BotoCoreError, ClientError

from totes_ingest import config
from totes_ingest.aws import error_code, secrets_client
from totes_ingest.db_errors import as_source_error
from totes_ingest.errors import SecretError, SourceUnavailable

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


def ssl_context(mode: str) -> ssl.SSLContext | None:
    """libpq-style modes: ``disable``, ``require`` (encrypted), ``verify-full``."""
    if mode == "disable":
        return None
    context = ssl.create_default_context()
    if mode == "require":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def open_connection(
    settings: dict[str, Any], ssl_mode: str = "disable"
) -> pg8000.native.Connection:
    """Connect with explicit settings; failures become SourceUnavailable or SourceError."""
    kwargs = dict(settings)
    if "unix_sock" not in kwargs:
        kwargs["ssl_context"] = ssl_context(ssl_mode)
    try:
        conn = pg8000.native.Connection(application_name=APPLICATION_NAME, timeout=60, **kwargs)
        conn.run(f"SET statement_timeout = {int(config.statement_timeout_ms())}")
    except pg8000.exceptions.DatabaseError as e:
        raise as_source_error(e, "connect") from e
    except (pg8000.exceptions.InterfaceError, OSError) as e:
        # A server that refuses the login (FATAL) closes the socket; pg8000 may then
        # report the broken pipe, with the server's reason as its context.
        refusal = _database_error_in(e)
        if refusal is not None:
            raise as_source_error(refusal, "connect") from e
        raise SourceUnavailable(f"cannot connect to the database: {type(e).__name__}") from e
    return conn


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
    (``require`` unless configured otherwise).
    """
    name = config.db_secret_name()
    secret = db_connections_get_secret(secrets_client(), name)
    return open_connection(connection_settings(secret, name), config.ssl_mode())


def close_db_connection(conn: pg8000.native.Connection) -> None:
    """Close ``conn``; a connection that is already gone is not an error."""
    with contextlib.suppress(pg8000.exceptions.InterfaceError, OSError):
        conn.close()
