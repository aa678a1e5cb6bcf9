"""The lake's commit protocol: each watermark has exactly one successor window.

A table's history in the bucket is a chain of windows ``[start, end)``; the newest
committed key's end is the watermark. Committing a window is two S3 operations that are
not atomic together, and two executions may race for the same table, so a commit first
creates a *claim* for its window's start with ``If-None-Match: *``:

- the first claim for a watermark wins; any other execution that read the same watermark
  loses, drops its staged object and reports the table as skipped (its rows are not lost:
  the next run starts from the winner's end);
- the claim names the run's staged object and the final key, so whoever finds a claim
  whose final key is missing (a crash between claim and copy) can finish the commit: a
  retry of the same step, or the next run's watermark lookup (``resolve_watermark``).

Only keys a claim names are the table's history: anything else under the table's prefix
(a stray upload, a key from the future) is ignored with a WARNING and never moves the
watermark. A claim is checked before it is believed (a malformed or forged one is a
LakeError naming its key), and finishing a commit only ever copies the staged object the
claim names, after checking that it was staged for that very window and run.

Staging and final keys are pure functions of the window (and, for staging, the run), so
a retried step rewrites the same objects instead of adding duplicates.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Literal, TypeVar

from boto3.exceptions import S3TransferFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from totes_ingest.aws import as_lake_error, error_code, lake_errors
from totes_ingest.config import STAGING_PREFIX
from totes_ingest.cursor import CursorRange
from totes_ingest.errors import LakeError
from totes_ingest.format_time import format_time, parse_time
from totes_ingest.generate_file_key import (
    claim_key,
    generate_file_key,
    is_valid_run_id,
    parse_file_key,
    parse_stamp,
    staging_key,
    stamp,
)
from totes_ingest.observability import logger
from totes_ingest.read_ahead import read_ahead
from totes_ingest.window import Window
from totes_ingest.write_to_s3 import SINGLE_PUT_BYTES

T = TypeVar("T")

_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_CLAIM_TAKEN = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})
# A claim chain longer than this in one lookup means something is writing in a loop.
_MAX_ROLL_FORWARDS = 100
_MAX_CLAIM_BYTES = 64 << 10
# A staged object up to the size write_to_s3 puts in one request is committed by one
# CopyObject (a server-side copy, no bytes through the function); larger ones in parts.
_COPY_CONFIG: Final = TransferConfig(multipart_threshold=SINGLE_PUT_BYTES)
CLAIM_VERSION: Final = 2

# User metadata of staged (and so of committed) objects: which window and run made them.
META_START: Final = "totes-start"
META_END: Final = "totes-end"
META_RUN: Final = "totes-run"
META_ROWS: Final = "totes-rows"
# The cursor range the staged rows were read from (format_time; "" for None), so that a
# staged but uncommitted window can be verified and committed by a later run.
META_CURSOR_START: Final = "totes-cursor-start"
META_CURSOR_END: Final = "totes-cursor-end"
META_REREAD_FROM: Final = "totes-reread-from"


def _time_text(moment: datetime | None) -> str:
    return "" if moment is None else format_time(moment)


def staged_metadata(window: Window, rows: int) -> dict[str, str]:
    metadata = {
        META_START: stamp(window.start),
        META_END: stamp(window.end),
        META_RUN: window.staging_run,
        META_ROWS: str(rows),
    }
    if window.cursor is not None:
        metadata[META_CURSOR_START] = _time_text(window.cursor.start)
        metadata[META_CURSOR_END] = _time_text(window.cursor.end)
        metadata[META_REREAD_FROM] = _time_text(window.cursor.reread_from)
    return metadata


@dataclass(frozen=True)
class StagedWindow:
    """A window staged (by ``run_id``) but not committed: what its metadata says."""

    key: str
    run_id: str
    start: datetime | None
    end: datetime
    rows: int
    cursor: CursorRange
    size: int = 0  # bytes, when read from the object's head


def read_staged(key: str, metadata: dict[str, str], table: str) -> StagedWindow | None:
    """The staged window ``key`` holds, if its metadata is complete and agrees with its
    key; None otherwise (such an object is never reused)."""
    try:
        start = parse_stamp(metadata[META_START])
        end = parse_stamp(metadata[META_END])
        run_id = metadata[META_RUN]
        rows = int(metadata[META_ROWS])
        cursor_start = metadata[META_CURSOR_START] or None
        cursor = CursorRange(
            None if cursor_start is None else parse_time(cursor_start),
            parse_time(metadata[META_CURSOR_END]),
            parse_time(metadata[META_REREAD_FROM]) if metadata.get(META_REREAD_FROM) else None,
        )
    except (KeyError, ValueError):
        return None
    if end is None or rows < 0 or not is_valid_run_id(run_id):
        return None
    if (start is not None and start >= end) or staging_key(table, start, end, run_id) != key:
        return None
    return StagedWindow(key, run_id, start, end, rows, cursor)


def longest_from(
    staged: list[StagedWindow], start: datetime | None, cursor_start: datetime | None
) -> StagedWindow | None:
    """Of ``staged``, the longest window continuing the chain at ``start``/``cursor_start``."""
    follows = [s for s in staged if s.start == start and s.cursor.start == cursor_start]
    return max(follows, key=lambda s: (s.end, s.key), default=None)


@dataclass(frozen=True)
class Claim:
    """One window's claim to follow the watermark ``start``."""

    run_id: str
    start: datetime | None
    end: datetime
    final_key: str
    staging_key: str
    rows: int
    # The cursor values the window read; None in claims written before cursor ranges
    # (they read [start, end) as the cursor's own values).
    cursor: CursorRange | None = None

    @property
    def cursor_end(self) -> datetime:
        return self.end if self.cursor is None else self.cursor.end

    def to_json(self) -> bytes:
        body = {
            "version": CLAIM_VERSION,
            "run_id": self.run_id,
            "start": None if self.start is None else format_time(self.start),
            "end": format_time(self.end),
            "final_key": self.final_key,
            "staging_key": self.staging_key,
            "rows": self.rows,
            "cursor": None if self.cursor is None else self.cursor.to_payload(),
        }
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def parse(cls, body: bytes, *, key: str, table: str) -> Claim:
        """The claim stored at ``key``; LakeError if it is not a well-formed claim of
        ``table`` whose keys are exactly those of its window."""
        try:
            if len(body) > _MAX_CLAIM_BYTES:
                raise ValueError("too large")
            data = json.loads(body)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            claim = _v2(data, table) if data.get("version") == CLAIM_VERSION else _v1(data, table)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise LakeError(f"claim {key} is malformed: {e}", table=table) from None
        if claim_key(table, claim.start) != key:
            raise LakeError(f"claim {key} is for another window", table=table)
        return claim


def _text(data: dict[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    return value


def _rows(data: dict[str, Any]) -> int:
    rows = data["rows"]
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        raise ValueError("rows is not a count")
    return rows


def _v2(data: dict[str, Any], table: str) -> Claim:
    run_id = _text(data, "run_id")
    start = None if data["start"] is None else parse_time(_text(data, "start"))
    end = parse_time(_text(data, "end"))
    cursor = data.get("cursor")
    claim = Claim(
        run_id=run_id,
        start=start,
        end=end,
        final_key=_text(data, "final_key"),
        staging_key=_text(data, "staging_key"),
        rows=_rows(data),
        cursor=None if cursor is None else CursorRange.from_payload(cursor),
    )
    if not is_valid_run_id(run_id) or (start is not None and start >= end):
        raise ValueError("bad run id or window")
    if claim.final_key != generate_file_key(table, end):
        raise ValueError(f"final key {claim.final_key!r} is not the window's")
    if claim.staging_key != staging_key(table, start, end, run_id):
        raise ValueError(f"staging key {claim.staging_key!r} is not the window's")
    return claim


def _v1(data: dict[str, Any], table: str) -> Claim:
    """A claim written before version 2: its window is read off its keys."""
    final, staged = _text(data, "final_key"), _text(data, "staging_key")
    parsed = parse_file_key(final)
    if parsed is None or parsed[0] != table:
        raise ValueError(f"final key {final!r} is not a key of {table}")
    prefix = f"_staging/{table}/"
    if not staged.startswith(prefix) or not staged.endswith(".parquet"):
        raise ValueError(f"staging key {staged!r} is not a staging key of {table}")
    start_text, _, end_text = staged[len(prefix) : -len(".parquet")].partition("-")
    start, end = parse_stamp(start_text), parse_stamp(end_text)
    if end != parsed[1] or (start is not None and end is not None and start >= end):
        raise ValueError("its keys disagree on the window")
    assert end is not None
    return Claim(_text(data, "run_id"), start, end, final, staged, _rows(data))


@dataclass(frozen=True)
class Watermark:
    """The end of a table's newest committed window (None: nothing committed yet)."""

    end: datetime | None = None
    key: str | None = None
    cursor_end: datetime | None = None  # the cursor value the next window starts from


@dataclass(frozen=True)
class CommitResult:
    status: Literal["written", "skipped"]
    key: str | None
    reason: str | None = None


# The date folders below a table's prefix, from the top: yyyy/, mm/, dd/.
_FOLDER_DIGITS = (4, 2, 2)


def newest_keys(s3: Any, bucket: str, table: str) -> Iterator[str]:
    """The table's well-formed lake keys, newest first (committed or not).

    Rather than list a history that grows by a key every run, it descends the
    ``yyyy/mm/dd/`` folders newest first (a handful of small listings, each followed past
    1,000 entries), so the newest key costs a few requests however long the history.
    """
    yield from _descend(s3, bucket, table, f"{table}/", _FOLDER_DIGITS)


def _descend(
    s3: Any, bucket: str, table: str, prefix: str, folders: tuple[int, ...]
) -> Iterator[str]:
    paginator = s3.get_paginator("list_objects_v2")
    with lake_errors("list", table=table):
        if not folders:
            keys = [
                item["Key"]
                for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
                for item in page.get("Contents", [])
            ]
        else:
            children = [
                common["Prefix"]
                for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
                for common in page.get("CommonPrefixes", [])
            ]
    if not folders:
        yield from sorted(
            (key for key in keys if (parsed := parse_file_key(key)) and parsed[0] == table),
            reverse=True,
        )
        return
    for child in sorted(children, reverse=True):
        name = child[len(prefix) : -1]
        if child.endswith("/") and len(name) == folders[0] and name.isdigit():
            yield from _descend(s3, bucket, table, child, folders[1:])


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

        def read() -> tuple[bytes, str]:
            response = self.s3.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read(_MAX_CLAIM_BYTES + 1), str(response["ETag"])

        found = self._unless_missing("read", key, table, read)
        if found is None:
            return None
        body, etag = found
        return Claim.parse(body, key=key, table=table), etag

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

    # -- the table's history ---------------------------------------------------------

    def committed(self, table: str, *, ahead: int = 1) -> Iterator[tuple[str, Claim]]:
        """The table's committed keys with their claims, newest first.

        A key is committed when the claim for its window's start names it. Its start is
        in its metadata (copied from its staged object); for keys written before that,
        it is the end of the next older key. ``ahead``: keys checked at once (a reader
        of the whole history; the watermark needs only the newest).
        """
        newer, older = itertools.tee(newest_keys(self.s3, self.bucket, table))
        next(older, None)
        # (key, the next older key); no keys: the chain still holds its trailing None
        listed = zip(newer, itertools.chain(older, [None]), strict=False)

        def check(pair: tuple[str, str | None]) -> tuple[str, Claim | None]:
            return pair[0], self._claim_of(table, *pair)

        for key, claim in read_ahead(check, listed, ahead):
            if claim is not None:
                yield key, claim
            else:
                logger.warning(
                    "Ignored an object the commit protocol did not write",
                    extra={"table": table, "key": key},
                )

    def _claim_of(self, table: str, key: str, older: str | None) -> Claim | None:
        recorded = self.metadata(key, table=table).get(META_START)
        try:
            start = parse_stamp(recorded) if recorded is not None else None
        except ValueError:
            return None
        if recorded is None and older is not None:
            parsed = parse_file_key(older)
            start = parsed[1] if parsed else None
        claim = self.read_claim(claim_key(table, start), table=table)
        return claim if claim is not None and claim.final_key == key else None

    def resolve_watermark(self, table: str) -> Watermark:
        """The table's watermark, after finishing any interrupted commit."""
        for _ in range(_MAX_ROLL_FORWARDS):
            newest = next(self.committed(table), None)
            watermark = Watermark()
            if newest is not None:
                key, claim = newest
                watermark = Watermark(claim.end, key, claim.cursor_end)
            next_claim = claim_key(table, watermark.end)
            found = self._read_claim_version(next_claim, table=table)
            if found is None or self.exists(found[0].final_key, table=table):
                return watermark
            claim, etag = found
            if self._finish(table, claim):
                logger.warning(
                    "Finished an interrupted commit",
                    extra={"table": table, "key": claim.final_key, "claimed_by": claim.run_id},
                )
            elif self._delete_version(next_claim, etag, table=table):
                # Claimed, never copied, and the staged object is gone: nothing of it
                # was committed, so the claim is void. Only the version read is removed:
                # a removal held up in flight must not remove the claim of a run that
                # removed this one itself meanwhile and committed (a second window from
                # the same watermark would follow). If it changed, look again.
                logger.warning(
                    "Removed a void claim", extra={"table": table, "claimed_by": claim.run_id}
                )
                return watermark
        raise LakeError("claim chain did not settle", table=table)

    def staged_windows(
        self, table: str, start: datetime | None, end_limit: datetime
    ) -> list[StagedWindow]:
        """The staged, uncommitted windows of ``table`` inside ``[start, end_limit]``
        (``start`` None: from the beginning), each with its metadata complete and agreeing
        with its key. One listing of the table's staging folder, one HEAD a candidate."""
        prefix = f"{STAGING_PREFIX}{table}/"
        paginator = self.s3.get_paginator("list_objects_v2")
        with lake_errors("list", table=table):
            keys = [
                item["Key"]
                for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
                for item in page.get("Contents", [])
                if item["Key"].endswith(".parquet")
            ]
        found: list[StagedWindow] = []
        for key in keys:
            bounds = key.removeprefix(prefix).split("-", 2)[:2]
            try:
                low, high = (parse_stamp(b) for b in bounds)
            except ValueError:
                continue
            if high is None or high > end_limit:
                continue
            if start is not None and (low is None or low < start):
                continue
            head = self._head(key, table=table)
            staged = (
                None if head is None else read_staged(key, dict(head.get("Metadata", {})), table)
            )
            if staged is not None:
                found.append(staged)
        return found

    def staged_window(
        self,
        table: str,
        start: datetime | None,
        cursor_start: datetime | None,
        end_limit: datetime,
    ) -> StagedWindow | None:
        """The longest staged, uncommitted window that can follow the watermark ``start``
        (whose cursor ends at ``cursor_start``) and ends by ``end_limit``: its rows are
        then committed without extracting them again. None if there is none."""
        return longest_from(self.staged_windows(table, start, end_limit), start, cursor_start)

    def verify_staged(self, window: Window) -> StagedWindow:
        """The staged object ``window`` commits, checked against the window (LakeError if
        it is gone or was staged for another window)."""
        table = window.table
        key = staging_key(table, window.start, window.end, window.staging_run)
        head = self._head(key, table=table)
        staged = None if head is None else read_staged(key, dict(head.get("Metadata", {})), table)
        if staged is None or (window.cursor is not None and staged.cursor != window.cursor):
            raise LakeError(
                f"staged object {key} is missing or not the window's",
                table=table,
                window=window.label,
            )
        return replace(staged, size=int((head or {}).get("ContentLength", 0)))

    # -- the protocol ----------------------------------------------------------------

    def commit(self, window: Window, rows: int) -> CommitResult:
        """Publish the run's staged extract of ``window`` as the table's next key, once."""
        table = window.table
        mine = Claim(
            run_id=window.staging_run,
            start=window.start,
            end=window.end,
            final_key=generate_file_key(table, window.end),
            staging_key=staging_key(table, window.start, window.end, window.staging_run),
            rows=rows,
            cursor=window.cursor,
        )
        key = claim_key(table, window.start)
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
                raise as_lake_error(e, f"claim {key}", table=table, window=window.label) from e
            existing = self.read_claim(key, table=table)
            if existing != mine:
                self.delete(mine.staging_key, table=table)
                owner = existing.run_id if existing else "another run"
                return CommitResult(
                    "skipped",
                    None,
                    f"the window starting at the watermark was committed by {owner}",
                )
        if not self._finish(table, mine):
            raise LakeError(
                f"staged object {mine.staging_key} vanished before its commit",
                table=table,
                window=window.label,
            )
        return CommitResult("written", mine.final_key)

    def _finish(self, table: str, claim: Claim) -> bool:
        """Copy the claim's staged object to its final key; False if nothing was staged."""
        if self.exists(claim.final_key, table=table):
            self.delete(claim.staging_key, table=table)
            return True
        staged = self._head(claim.staging_key, table=table)
        if staged is None:
            return self.exists(claim.final_key, table=table)
        made_by = staged.get("Metadata", {})
        expected = {
            META_START: stamp(claim.start),
            META_END: stamp(claim.end),
            META_RUN: claim.run_id,
        }
        # Staged objects of claims before version 2 carry no such metadata; their keys
        # were checked to be the window's own staging key.
        legacy = claim.cursor is None and not claim.staging_key.endswith(f"-{claim.run_id}.parquet")
        if not legacy and any(made_by.get(k) != v for k, v in expected.items()):
            raise LakeError(
                f"staged object {claim.staging_key} was not staged for its claim's window "
                f"and run: refusing to commit it",
                table=table,
            )
        try:
            self.s3.copy(
                {"Bucket": self.bucket, "Key": claim.staging_key},
                self.bucket,
                claim.final_key,
                Config=_COPY_CONFIG,
            )
        except (ClientError, BotoCoreError, S3TransferFailedError) as e:
            # Another run may have finished this commit between our checks: success.
            if not self.exists(claim.final_key, table=table):
                raise as_lake_error(e, f"copy to {claim.final_key}", table=table) from e
        self.delete(claim.staging_key, table=table)
        return True
