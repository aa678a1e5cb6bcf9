"""The lake's commit protocol: each watermark has exactly one successor window.

A table's history in the bucket is a chain of windows ``[start, end)``; the newest key's
end is the watermark. Committing a window is two S3 operations that are not atomic
together, and two executions may race for the same table, so a commit first creates a
*claim* for its window's start with ``If-None-Match: *``:

- the first claim for a watermark wins; any other execution that read the same watermark
  loses, drops its staged object and reports the table as skipped (its rows are not lost:
  the next run starts from the winner's end);
- the claim names the staged object and the final key, so whoever finds a claim whose
  final key is missing (a crash between claim and copy) can finish the commit: a retry of
  the same step, or the next run's watermark lookup (``resolve_watermark``).

Staging and final keys are pure functions of the table and the window, so a retried step
rewrites the same objects instead of adding duplicates.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

from boto3.exceptions import S3TransferFailedError
from botocore.exceptions import BotoCoreError, ClientError

from totes_ingest.aws import as_lake_error, error_code, lake_errors
from totes_ingest.config import CLAIMS_PREFIX, STAGING_PREFIX
from totes_ingest.errors import LakeError
from totes_ingest.generate_file_key import generate_file_key, parse_file_key
from totes_ingest.get_last_ingest_time import get_latest_filename
from totes_ingest.observability import logger

T = TypeVar("T")

_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_CLAIM_TAKEN = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})
# A claim chain longer than this in one lookup means something is writing in a loop.
_MAX_ROLL_FORWARDS = 100


def _stamp(moment: datetime | None) -> str:
    return "initial" if moment is None else f"{moment:%Y%m%dT%H%M%S%f}"


def staging_key(table: str, start: datetime | None, end: datetime) -> str:
    return f"{STAGING_PREFIX}{table}/{_stamp(start)}-{_stamp(end)}.parquet"


def claim_key(table: str, start: datetime | None) -> str:
    return f"{CLAIMS_PREFIX}{table}/{_stamp(start)}.json"


@dataclass(frozen=True)
class Claim:
    run_id: str
    final_key: str
    staging_key: str
    rows: int

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def from_json(cls, body: bytes) -> Claim:
        data = json.loads(body)
        return cls(
            run_id=str(data["run_id"]),
            final_key=str(data["final_key"]),
            staging_key=str(data["staging_key"]),
            rows=int(data["rows"]),
        )


@dataclass(frozen=True)
class CommitResult:
    status: Literal["written", "skipped"]
    key: str | None
    reason: str | None = None


class Lake:
    """The ingest bucket, seen as a set of table histories."""

    def __init__(self, s3: Any, bucket: str):
        self.s3 = s3
        self.bucket = bucket

    # -- small S3 helpers, each translating failures into the project's errors ----------

    def _unless_missing(self, action: str, key: str, table: str, call: Callable[[], T]) -> T | None:
        """``call()``, or None if ``key`` does not exist; other failures become lake errors."""
        try:
            return call()
        except ClientError as e:
            if error_code(e) in _NOT_FOUND:
                return None
            raise as_lake_error(e, f"{action} of {key}", table=table) from e
        except BotoCoreError as e:
            raise as_lake_error(e, f"{action} of {key}", table=table) from e

    def _head(self, key: str, *, table: str) -> dict[str, Any] | None:
        def head() -> dict[str, Any]:
            found: dict[str, Any] = self.s3.head_object(Bucket=self.bucket, Key=key)
            return found

        return self._unless_missing("head", key, table, head)

    def exists(self, key: str, *, table: str) -> bool:
        return self._head(key, table=table) is not None

    def metadata(self, key: str, *, table: str) -> dict[str, str]:
        """User metadata of ``key`` (empty if the object is gone)."""
        head = self._head(key, table=table) or {}
        return dict(head.get("Metadata", {}))

    def _read_claim_version(self, key: str, *, table: str) -> tuple[Claim, str] | None:
        """The claim at ``key`` and its ETag (which names this very version of it)."""

        def read() -> tuple[Claim, str]:
            response = self.s3.get_object(Bucket=self.bucket, Key=key)
            return Claim.from_json(response["Body"].read()), str(response["ETag"])

        return self._unless_missing("read", key, table, read)

    def _delete_version(self, key: str, etag: str, *, table: str) -> bool:
        """Delete ``key`` only if it is still the version ``etag``; False if it changed or
        is gone (S3 conditional delete, If-Match)."""
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=key, IfMatch=etag)
        except ClientError as e:
            if error_code(e) in _CLAIM_TAKEN | _NOT_FOUND:
                return False
            raise as_lake_error(e, f"delete of {key}", table=table) from e
        except BotoCoreError as e:
            raise as_lake_error(e, f"delete of {key}", table=table) from e
        return True

    def read_claim(self, key: str, *, table: str) -> Claim | None:
        found = self._read_claim_version(key, table=table)
        return None if found is None else found[0]

    def delete(self, key: str, *, table: str) -> None:
        with lake_errors(f"delete of {key}", table=table):
            self.s3.delete_object(Bucket=self.bucket, Key=key)

    # -- the protocol ----------------------------------------------------------------

    def resolve_watermark(self, table: str) -> tuple[datetime | None, str | None]:
        """The table's watermark and newest key, after finishing any interrupted commit."""
        for _ in range(_MAX_ROLL_FORWARDS):
            last_key = get_latest_filename(self.s3, self.bucket, table)
            parsed = parse_file_key(last_key) if last_key else None
            watermark = parsed[1] if parsed else None
            key = claim_key(table, watermark)
            found = self._read_claim_version(key, table=table)
            if found is None or self.exists(found[0].final_key, table=table):
                return watermark, last_key
            claim, etag = found
            if self._finish(table, claim):
                logger.warning(
                    "Finished an interrupted commit",
                    extra={"table": table, "key": claim.final_key, "claimed_by": claim.run_id},
                )
            elif self._delete_version(key, etag, table=table):
                # Claimed, never copied, and the staged object is gone: nothing of it
                # was committed, so the claim is void. Only the version read is removed:
                # a removal held up in flight must not remove the claim of a run that
                # removed this one itself meanwhile and committed (a second window from
                # the same watermark would follow). If it changed, look again.
                logger.warning(
                    "Removed a void claim", extra={"table": table, "claimed_by": claim.run_id}
                )
                return watermark, last_key
        raise LakeError("claim chain did not settle", table=table)

    def commit(
        self, table: str, start: datetime | None, end: datetime, run_id: str, rows: int
    ) -> CommitResult:
        """Publish the staged window ``[start, end)`` as the table's next key, exactly once."""
        final = generate_file_key(table, end)
        staged = staging_key(table, start, end)
        mine = Claim(run_id=run_id, final_key=final, staging_key=staged, rows=rows)
        key = claim_key(table, start)
        try:
            self.s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=mine.to_json(),
                IfNoneMatch="*",
                ContentType="application/json",
            )
        except (ClientError, BotoCoreError) as e:
            if not (isinstance(e, ClientError) and error_code(e) in _CLAIM_TAKEN):
                raise as_lake_error(e, f"claim {key}", table=table) from e
            existing = self.read_claim(key, table=table)
            if existing != mine:
                # Two runs held back to the same end time stage the same key: leave it to
                # the winner's copy unless that copy is already done.
                shared = existing is not None and existing.staging_key == staged
                if not shared or self.exists(final, table=table):
                    self.delete(staged, table=table)
                owner = existing.run_id if existing else "another run"
                return CommitResult(
                    "skipped",
                    None,
                    f"the window starting at the watermark was committed by {owner}",
                )
        if not self._finish(table, mine):
            raise LakeError(f"staged object {staged} vanished before its commit", table=table)
        return CommitResult("written", final)

    def _finish(self, table: str, claim: Claim) -> bool:
        """Copy the claim's staged object to its final key; False if nothing was staged."""
        if self.exists(claim.final_key, table=table):
            self.delete(claim.staging_key, table=table)
            return True
        if not self.exists(claim.staging_key, table=table):
            return self.exists(claim.final_key, table=table)
        try:
            self.s3.copy(
                {"Bucket": self.bucket, "Key": claim.staging_key}, self.bucket, claim.final_key
            )
        except (ClientError, BotoCoreError, S3TransferFailedError) as e:
            # Another run may have finished this commit between our checks: success.
            if not self.exists(claim.final_key, table=table):
                raise as_lake_error(e, f"copy to {claim.final_key}", table=table) from e
        self.delete(claim.staging_key, table=table)
        return True
