"""The project's exception types.

Every error raised across a step boundary is one of these, so the state machine's
Retry/Catch blocks can name them (Step Functions uses the exception's class name as the
error name). Messages name the table and the window and never carry credentials.
"""

from __future__ import annotations


class IngestError(Exception):
    """Base class. ``table`` and ``window`` are included in the message when known."""

    def __init__(self, message: str, *, table: str | None = None, window: str | None = None):
        parts = [message]
        if table is not None:
            parts.append(f"table={table}")
        if window is not None:
            parts.append(f"window={window}")
        super().__init__("; ".join(parts))
        self.table = table
        self.window = window


class DateFormatError(IngestError, ValueError):
    """A window bound is not a ``format_time`` string."""


class InvalidEvent(IngestError):
    """The execution input is malformed or names something that is not an ingestible table."""


class SecretError(IngestError):
    """The database secret is missing, malformed or lacks required keys."""


class SourceUnavailable(IngestError):
    """The database could not be reached or dropped the connection (transient: retried)."""


class SourceError(IngestError):
    """The database rejected a statement (permanent: not retried)."""


class UnsupportedColumnType(IngestError):
    """A column's PostgreSQL type has no faithful Arrow/Parquet mapping."""


class ReconciliationError(IngestError):
    """Rows counted in the source window differ from rows written."""


class LakeUnavailable(IngestError):
    """S3 throttled or failed transiently (retried)."""


class LakeError(IngestError):
    """S3 refused the request (access denied, missing bucket...)."""


class CatalogError(IngestError):
    """The Glue Data Catalog refused a request, or a table cannot be cataloged (Glue's
    transient failures are LakeUnavailable, retried like S3's)."""


class TablesFailed(IngestError):
    """At least one table failed; the others were committed."""
