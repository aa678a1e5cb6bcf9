"""The audit's lease: one audit of a table at a time, in AWS as locally.

Two audits of one table at once could both repair one missing version (each sees it
missing, each writes a repair object). Locally the lake lock rules that out; in AWS the
scheduled audit and a hand-started one are separate executions, so each audit of a table
first holds ``_audit/<table>/lease``, an S3 object:

- **taken** with a conditional put (``If-None-Match: *``): of any number of audits racing
  for a free lease, S3 lets exactly one create it;
- **taken over** only when expired (its ``expires`` instant is past) or released, with a
  put conditional on the ETag read (``If-Match``): of audits racing for the same stale
  lease, exactly one replaces that version;
- **released** at the end with a delete conditional on the holder's ETag, so an audit that
  outlived its lease never removes its successor's.

The lease outlives any audit that holds it (``AUDIT_LEASE_SECONDS``, above the function's
timeout), so an expired lease belongs to an audit that can no longer be running.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from totes_ingest.aws import as_lake_error, error_code
from totes_ingest.errors import IngestError, LakeError
from totes_ingest.lake import Lake
from totes_ingest.observability import logger

AUDIT_PREFIX: Final = "_audit/"
_TAKEN: Final = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})
_NOT_FOUND: Final = frozenset({"404", "NoSuchKey", "NotFound"})
_MAX_LEASE_BYTES: Final = 4096
_ATTEMPTS: Final = 3  # a free lease, a stale one, a free one again (released meanwhile)


class AuditLeaseHeld(IngestError):
    """Another audit of the table holds its lease: this one does not run (not retried)."""


def lease_key(table: str) -> str:
    return f"{AUDIT_PREFIX}{table}/lease"


@dataclass(frozen=True)
class Lease:
    """A lease held: which table, by whom, until when, and the ETag of its version."""

    table: str
    owner: str
    expires: datetime
    etag: str

    @property
    def key(self) -> str:
        return lease_key(self.table)


def _body(owner: str, taken: datetime, expires: datetime) -> bytes:
    return json.dumps(
        {"owner": owner, "taken": taken.isoformat(), "expires": expires.isoformat()}
    ).encode()


def _expires(body: bytes, key: str, table: str) -> datetime:
    try:
        data = json.loads(body)
        moment = datetime.fromisoformat(str(data["expires"]))
    except (ValueError, KeyError, TypeError) as e:
        raise LakeError(f"{key} is not a lease: {e}", table=table) from e
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def acquire(
    lake: Lake, table: str, owner: str, *, ttl: timedelta, now: datetime | None = None
) -> Lease:
    """Hold ``table``'s lease for ``ttl``, or raise AuditLeaseHeld naming its holder."""
    key = lease_key(table)
    for _ in range(_ATTEMPTS):
        moment = now or datetime.now(UTC)
        expires = moment + ttl
        etag = _put(lake, key, _body(owner, moment, expires), table, IfNoneMatch="*")
        if etag is not None:
            return Lease(table, owner, expires, etag)
        current = _read(lake, key, table)
        if current is None:
            continue  # released between our put and our read: try a free lease again
        body, held_etag = current
        held_until = _expires(body, key, table)
        if held_until > moment:
            raise AuditLeaseHeld(
                f"another audit holds the lease until {held_until.isoformat()} "
                f"({body.decode(errors='replace')[:200]})",
                table=table,
            )
        etag = _put(lake, key, _body(owner, moment, expires), table, IfMatch=held_etag)
        if etag is not None:
            logger.warning(
                "Took over an expired audit lease",
                extra={"table": table, "expired": held_until.isoformat(), "owner": owner},
            )
            return Lease(table, owner, expires, etag)
    raise AuditLeaseHeld("another audit took the lease first", table=table)


def release(lake: Lake, lease: Lease) -> bool:
    """Give the lease up; False (and a WARNING) if it is no longer ours (it expired and
    another audit took it over), which leaves the successor's lease in place."""
    try:
        lake.s3.delete_object(Bucket=lake.bucket, Key=lease.key, IfMatch=lease.etag)
    except ClientError as e:
        if error_code(e) in _TAKEN | _NOT_FOUND:
            logger.warning(
                "Audit lease was no longer ours at release",
                extra={"table": lease.table, "owner": lease.owner},
            )
            return False
        raise as_lake_error(e, f"delete of {lease.key}", table=lease.table) from e
    except BotoCoreError as e:
        raise as_lake_error(e, f"delete of {lease.key}", table=lease.table) from e
    return True


def _put(lake: Lake, key: str, body: bytes, table: str, **condition: str) -> str | None:
    """Put ``body`` under ``condition``; its ETag, or None if the condition failed."""
    try:
        response: dict[str, Any] = lake.s3.put_object(
            Bucket=lake.bucket, Key=key, Body=body, ContentType="application/json", **condition
        )
    except ClientError as e:
        code = error_code(e)
        # If-Match on a lease deleted meanwhile is a 404: that version is gone too.
        if code in _TAKEN or ("IfMatch" in condition and code in _NOT_FOUND):
            return None
        raise as_lake_error(e, f"put of {key}", table=table) from e
    except BotoCoreError as e:
        raise as_lake_error(e, f"put of {key}", table=table) from e
    return str(response["ETag"])


def _read(lake: Lake, key: str, table: str) -> tuple[bytes, str] | None:
    try:
        response = lake.s3.get_object(Bucket=lake.bucket, Key=key)
        return response["Body"].read(_MAX_LEASE_BYTES), str(response["ETag"])
    except ClientError as e:
        if error_code(e) in _NOT_FOUND:
            return None
        raise as_lake_error(e, f"read of {key}", table=table) from e
    except BotoCoreError as e:
        raise as_lake_error(e, f"read of {key}", table=table) from e
