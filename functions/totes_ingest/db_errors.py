"""The one translation of database driver failures into the project's errors.

Every statement the library runs goes through :func:`source_errors`, so the state
machine's Retry sees ``SourceUnavailable`` for what may pass (a dropped connection, a
server shutting down, too many connections) and ``SourceError`` for what will not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pg8000.exceptions

from totes_ingest.errors import SourceError, SourceUnavailable

# SQLSTATE classes worth a retry: connection exceptions, insufficient resources,
# operator intervention (admin shutdown, crash recovery).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57P")


def as_source_error(
    error: pg8000.exceptions.DatabaseError,
    action: str,
    *,
    table: str | None = None,
    window: str | None = None,
) -> SourceError | SourceUnavailable:
    """Translate a server error; the message is the server's (which never echoes passwords)."""
    detail = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
    code = str(detail.get("C", ""))
    message = str(detail.get("M", type(error).__name__))
    kind = SourceUnavailable if code.startswith(_TRANSIENT_SQLSTATE_CLASSES) else SourceError
    return kind(
        f"database {action} failed: {message} (SQLSTATE {code})", table=table, window=window
    )


@contextmanager
def source_errors(
    action: str, *, table: str | None = None, window: str | None = None
) -> Iterator[None]:
    """Re-raise driver failures inside the block as SourceError / SourceUnavailable."""
    try:
        yield
    except pg8000.exceptions.DatabaseError as e:
        raise as_source_error(e, action, table=table, window=window) from e
    except (pg8000.exceptions.InterfaceError, OSError) as e:
        raise SourceUnavailable(
            f"database connection lost during {action}: {type(e).__name__}",
            table=table,
            window=window,
        ) from e
