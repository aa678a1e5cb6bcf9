"""PostgreSQL URLs to pg8000 settings and Secrets Manager secrets, and connections."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

import pg8000.native

Connect: TypeAlias = Callable[..., pg8000.native.Connection]


def settings_from_url(url: str) -> dict[str, Any]:
    """``postgresql://user:pw@host:port/db`` (or ``?host=/socket/dir``) to a secret dict.

    The keys are those ``db_connections.connection_settings`` reads.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError("database URL must start with postgresql://")
    query = parse_qs(parts.query)
    settings: dict[str, Any] = {
        "user": unquote(parts.username or "postgres"),
        "password": unquote(parts.password or ""),
        "database": unquote(parts.path.lstrip("/")) or "postgres",
    }
    socket_dir = query.get("host", [None])[0]
    if socket_dir and socket_dir.startswith("/"):
        port = parts.port or 5432
        settings["unix_sock"] = f"{socket_dir}/.s.PGSQL.{port}"
    else:
        settings["host"] = parts.hostname or "127.0.0.1"
        settings["port"] = parts.port or 5432
    return settings


def with_database(settings: dict[str, Any], database: str) -> dict[str, Any]:
    return {**settings, "database": database}


def redact(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def connect(settings: Mapping[str, Any], **options: Any) -> pg8000.native.Connection:
    """A pg8000 connection from settings; an empty password means none (trust auth).

    ``options`` go to pg8000 as they are (``application_name``...). The caller closes it.
    """
    kwargs = {k: v for k, v in settings.items() if k != "password" or v}
    return pg8000.native.Connection(**kwargs, **options)
