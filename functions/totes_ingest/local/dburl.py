"""PostgreSQL URLs to pg8000 settings and Secrets Manager secrets, and connections.

A password is often pasted in raw, not percent-encoded, and may hold any of ``#``, ``/``,
``?`` or ``@``, which a generic URL parser reads as the start of a fragment, path, query
or host. So the userinfo is found first: it ends at the LAST ``@`` of the URL and its
user ends at its first ``:``. Only the rest (host, port, database, query) goes through
``urlsplit``. A raw ``@`` anywhere after the userinfo (a query value) must therefore be
written ``%40``; percent-encoded passwords are decoded as before.

:func:`redact` uses the same split, so what it masks is exactly what would be sent as the
password, and it never shows a part of a URL that cannot be parsed which might be one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

import pg8000.native

Connect: TypeAlias = Callable[..., pg8000.native.Connection]

SCHEMES: Final = ("postgres", "postgresql")
MASK: Final = "***"
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_QUERY_PASSWORD: Final = re.compile(r"(?i)(\bpassword=)[^&#\s]*")


@dataclass(frozen=True)
class _Parts:
    """A URL cut where a raw password cannot mislead: ``scheme://user:password@rest``."""

    prefix: str  # "postgresql://", or "" when there is no scheme
    user: str | None  # None: no userinfo (no "@")
    password: str | None  # None: no ":" in the userinfo
    rest: str  # host[:port][/database][?query]

    @property
    def scheme(self) -> str:
        return self.prefix.removesuffix("://").lower()


def _split(url: str) -> _Parts:
    scheme = _SCHEME.match(url)
    prefix = scheme.group(0) if scheme else ""
    userinfo, at, rest = url[len(prefix) :].rpartition("@")
    if not at:
        return _Parts(prefix, None, None, rest)
    user, colon, password = userinfo.partition(":")
    return _Parts(prefix, user, password if colon else None, rest)


def settings_from_url(url: str) -> dict[str, Any]:
    """``postgresql://user:pw@host:port/db`` (or ``?host=/socket/dir``) to a secret dict.

    The keys are those ``db_connections.connection_settings`` reads. A ValueError's
    message never quotes the URL (it may hold a password): pair it with :func:`redact`.
    """
    parts = _split(url)
    if parts.scheme not in SCHEMES:
        raise ValueError("it must start with postgresql:// or postgres://")
    # The messages of urlsplit's own errors are not passed on: they quote the URL.
    try:
        location = urlsplit(f"//{parts.rest}")
    except ValueError:
        raise ValueError("the host is not valid") from None
    try:
        port = location.port or 5432
    except ValueError:
        raise ValueError("the port is not a valid port number") from None
    query = parse_qs(location.query)
    settings: dict[str, Any] = {
        "user": unquote(parts.user or "") or "postgres",
        "password": unquote(parts.password or ""),
        "database": unquote(location.path.lstrip("/")) or "postgres",
    }
    socket_dir = query.get("host", [None])[0]
    if socket_dir and socket_dir.startswith("/"):
        settings["unix_sock"] = f"{socket_dir}/.s.PGSQL.{port}"
    else:
        settings["host"] = location.hostname or "127.0.0.1"
        settings["port"] = port
    return settings


def with_database(settings: dict[str, Any], database: str) -> dict[str, Any]:
    return {**settings, "database": database}


def redact(url: str) -> str:
    """The URL with its password masked, for messages and logs.

    The password is what :func:`settings_from_url` would send (and any ``password=``
    value). Only what cannot be a password is shown: nothing of a text that is not
    ``scheme://...`` (a libpq keyword string, a URL missing its scheme), and only the
    scheme of a URL without userinfo that cannot be parsed (``user:secret`` with the
    ``@host`` forgotten reads as a host and a port).
    """
    parts = _split(url)
    if not parts.prefix:
        return MASK
    rest = _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", parts.rest)
    if parts.user is None:
        try:
            settings_from_url(url)
        except ValueError:
            return f"{parts.prefix}{MASK}"
        return f"{parts.prefix}{rest}"
    user = _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", parts.user)
    password = "" if parts.password is None else f":{MASK}"
    return f"{parts.prefix}{user}{password}@{rest}"


def connect(settings: Mapping[str, Any], **options: Any) -> pg8000.native.Connection:
    """A pg8000 connection from settings; an empty password means none (trust auth).

    ``options`` go to pg8000 as they are (``application_name``...). The caller closes it.
    """
    kwargs = {k: v for k, v in settings.items() if k != "password" or v}
    return pg8000.native.Connection(**kwargs, **options)
