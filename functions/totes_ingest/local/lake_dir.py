"""A local directory as the stand-in for the ingest bucket between local runs.

Before a run every file under the directory becomes an object of the (moto) bucket, its
key the file's relative path; after the run every object is written back and files whose
objects are gone are deleted. So the lake persists between runs and the next run is
incremental, exactly as against S3. The directory keeps S3's guarantees:

- **One run at a time.** :func:`locked` holds an exclusive ``flock`` on ``.totes-lake.lock``
  for the whole run (upload, execution, write-back); a second run is refused at once,
  naming the holder's pid. The lock belongs to an open file, so it dies with the process:
  a killed run never leaves a stale lock, and nothing has to be cleaned up.
- **Whole files only.** Each file is written to a temporary file in the same folder,
  fsynced, renamed over its name with ``os.replace`` and the folder fsynced: a file is
  either its old or its new content, never part of it. A temporary file left by a killed
  run is never uploaded, and is removed by the next run.
- **Any prefix of a write-back is a state S3 itself can reach.** The commit protocol
  (``totes_ingest.lake``) stages, claims, copies to the final key, then deletes the staged
  object, so the write-back goes in that order: ``_staging/`` objects, then ``_claims/``,
  then the tables' keys (oldest first within a table: keys sort by time), then the
  deletions, staged objects before claims. Interrupted anywhere, the lake holds at worst
  a claim without its final key, which the next run finishes or voids and redoes.

A marker file tells a lake directory from any other: a directory that is neither empty
nor marked is refused, so a mistyped ``--lake`` never uploads (or deletes) someone's files.
Files named ``.totes-*`` are the directory's own and never objects.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from totes_ingest.config import CLAIMS_PREFIX, STAGING_PREFIX

MARKER: Final = ".totes-lake"
LOCK: Final = ".totes-lake.lock"
RESERVED_PREFIX: Final = ".totes-"
TEMPORARY_PREFIX: Final = ".totes-tmp-"
_MARKER_TEXT: Final = "A local stand-in for the totes-ingest bucket.\n"


class LakeDirError(RuntimeError):
    """The directory cannot serve as a local lake."""


class LakeBusy(LakeDirError):
    """Another run holds the lake."""


@dataclass(frozen=True)
class SyncReport:
    """Files written and deleted by :meth:`LocalLake.download`."""

    written: int
    deleted: int
    unchanged: int


@contextmanager
def _os_errors(message: str) -> Iterator[None]:
    """An OSError as a one-line :class:`LakeDirError`: ``message: strerror``."""
    try:
        yield
    except OSError as e:
        raise LakeDirError(f"{message}: {e.strerror or e}") from e


def _reserved(path: Path) -> bool:
    return path.name.startswith(RESERVED_PREFIX)


def prepare(root: Path) -> None:
    """Create or check the lake directory (not marked as one yet: see :func:`locked`)."""
    with _os_errors(f"cannot use {root} as a lake"):
        if root.exists() and not root.is_dir():
            raise LakeDirError(f"{root} is not a directory")
        # Holding only the lock file (a run killed before it marked the lake) is empty.
        marked = (root / MARKER).exists()
        if root.is_dir() and not marked and any(not _reserved(p) for p in root.iterdir()):
            raise LakeDirError(
                f"{root} is not empty and is not a local lake (no {MARKER} file); "
                "choose a new or empty directory"
            )
        root.mkdir(parents=True, exist_ok=True)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_directories(directory: Path) -> None:
    """``mkdir -p``, each new directory made durable in its parent."""
    missing: list[Path] = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        new.mkdir()
        _fsync_directory(new.parent)


def write_atomically(target: Path, body: bytes) -> None:
    """Replace ``target`` with ``body`` whole: temporary file, fsync, rename, fsync."""
    _make_directories(target.parent)
    temporary = target.with_name(f"{TEMPORARY_PREFIX}{secrets.token_hex(6)}-{target.name}")
    try:
        with open(temporary, "xb") as file:
            file.write(body)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _holder(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"pid {text}" if text.isdigit() else "pid unknown"


def _lock(root: Path) -> int:
    """An open descriptor of the lake's lock file, exclusively locked by this process."""
    with _os_errors(f"cannot lock lake {root}"):
        fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # For the refusal message only: the lock itself is the flock, not this content.
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(fd, pid, 0)
        os.ftruncate(fd, len(pid))
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise LakeBusy(
            f"lake {root} is in use by another totes-ingest run ({holder}); "
            "try again when it has finished"
        ) from None
    except OSError as e:
        os.close(fd)
        raise LakeDirError(f"cannot lock lake {root}: {e.strerror}") from e
    return fd


@contextmanager
def locked(root: Path) -> Iterator[LocalLake]:
    """The lake directory, held by this process alone until the block ends.

    Refuses at once (:class:`LakeBusy`) if another process holds it: a waiting run would
    only queue up behind a long one, while a refused one loses nothing (the next run
    starts from the lake's watermarks). Leftover temporary files of a killed run are
    removed, and the marker is rewritten: a lake that cannot be written fails here, before
    anything runs, with a one-line :class:`LakeDirError`.
    """
    prepare(root)
    fd = _lock(root)
    try:
        lake = LocalLake(root)
        lake.remove_temporaries()
        with _os_errors(f"lake {root} is not writable"):
            write_atomically(root / MARKER, _MARKER_TEXT.encode())
        yield lake
    finally:
        os.close(fd)


def _holds(path: Path, body: bytes) -> bool:
    return path.is_file() and path.stat().st_size == len(body) and path.read_bytes() == body


def write_back_order(keys: Iterable[str]) -> list[str]:
    """``keys`` in the commit protocol's order: staged, claims, then the tables' keys."""

    def rank(key: str) -> tuple[int, str]:
        if key.startswith(STAGING_PREFIX):
            return 0, key
        return (1 if key.startswith(CLAIMS_PREFIX) else 2), key

    return sorted(keys, key=rank)


@dataclass(frozen=True)
class LocalLake:
    """A locked lake directory (from :func:`locked`), synced to and from a bucket."""

    root: Path

    def _files(self) -> dict[str, Path]:
        return {
            path.relative_to(self.root).as_posix(): path
            for path in sorted(self.root.rglob("*"))
            if path.is_file() and not _reserved(path)
        }

    def remove_temporaries(self) -> None:
        """Delete the temporary files a killed write-back left behind."""
        for path in list(self.root.rglob(f"{TEMPORARY_PREFIX}*")):
            with _os_errors(f"lake {self.root}: cannot remove {path}"):
                path.unlink(missing_ok=True)
                self._remove_empty_parents(path.parent)

    def upload(self, s3: Any, bucket: str) -> list[str]:
        """Put every file into ``bucket`` (key = relative path); the keys."""
        files = self._files()
        for key, path in files.items():
            with _os_errors(f"lake {self.root}: cannot read {key}"):
                body = path.read_bytes()
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        return list(files)

    def _target(self, key: str) -> Path:
        target = (self.root / key).resolve()
        if not target.is_relative_to(self.root.resolve()) or key.endswith("/") or _reserved(target):
            raise LakeDirError(f"object key {key!r} cannot be a file under {self.root}")
        return target

    def download(self, s3: Any, bucket: str, uploaded: list[str]) -> SyncReport:
        """Write every object back, in :func:`write_back_order`; then delete the uploaded
        files whose objects are gone, in the same order."""
        keys: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        # Every key is checked before anything is written.
        targets = {key: self._target(key) for key in write_back_order(keys)}
        gone = {key: self._target(key) for key in write_back_order(set(uploaded) - set(keys))}
        written = unchanged = 0
        for key, target in targets.items():
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            with _os_errors(f"lake {self.root}: cannot write {key}"):
                if _holds(target, body):
                    unchanged += 1
                    continue
                write_atomically(target, body)
            written += 1
        for key, path in gone.items():
            with _os_errors(f"lake {self.root}: cannot delete {key}"):
                if path.is_file():
                    path.unlink()
                    _fsync_directory(path.parent)
                    self._remove_empty_parents(path.parent)
        return SyncReport(written=written, deleted=len(gone), unchanged=unchanged)

    def _remove_empty_parents(self, directory: Path) -> None:
        root = self.root.resolve()
        directory = directory.resolve()
        while directory != root and directory.is_relative_to(root) and not any(directory.iterdir()):
            directory.rmdir()
            directory = directory.parent
