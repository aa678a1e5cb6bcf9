"""The one translation of database driver failures into the project's errors.

Every statement the library runs goes through :func:`source_errors`, so the state
machine's Retry sees ``SourceUnavailable`` for what may pass (a dropped connection, a
server shutting down, too many connections) and ``SourceError`` for what will not.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from totes_ingest.errors import SourceError, SourceUnavailable

if TYPE_CHECKING:
    import pg8000.exceptions

# The driver's exceptions, found where the connection's code loaded them: a step that
# never connects (GetLastIngestTime, CommitTable) never imports pg8000 (0.02-0.03 s of
# CPU and 2.5 MB of its cold start), and a block with no connection cannot raise them.
_DRIVER_EXCEPTIONS = "pg8000.exceptions"

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
    except Exception as e:
        translated = _translated(e, action, table=table, window=window)
        if translated is None:
            raise
        raise translated from e


def _translated(
    error: Exception, action: str, *, table: str | None, window: str | None
) -> SourceError | SourceUnavailable | None:
    """The project's error for a driver (or socket) failure; None for anything else."""
    driver = sys.modules.get(_DRIVER_EXCEPTIONS)
    if driver is not None and isinstance(error, driver.DatabaseError):
        return as_source_error(error, action, table=table, window=window)
    if isinstance(error, OSError) or (
        driver is not None and isinstance(error, driver.InterfaceError)
    ):
        return SourceUnavailable(
            f"database connection lost during {action}: {type(error).__name__}",
            table=table,
            window=window,
        )
    return None
