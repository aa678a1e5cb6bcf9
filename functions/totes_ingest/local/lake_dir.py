"""A local directory as the stand-in for the ingest bucket between local runs.

Each file under the directory is an object of the (moto) bucket, its key the file's
relative path; after the run the objects created or changed are written back and files
whose objects are gone are deleted. So the lake persists between runs and the next run
is incremental, exactly as against S3. :meth:`LocalLake.serve` loads a file into the
bucket only when the run first names its key or lists a prefix that holds it, and writes
back only what the run changed: a run's cost follows what it touches, not the lake's
size. (:meth:`LocalLake.upload` and :meth:`LocalLake.download` copy every file in and
every object out, for any S3 client.) The directory keeps S3's guarantees:

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
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from unittest import mock

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
    """Files written and deleted by a write-back; ``unchanged``: objects read from files
    and written back as they were (:meth:`LocalLake.serve`: left as they were)."""

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

        def body(key: str) -> bytes:
            read: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            return read

        return self._write_back(keys, set(uploaded) - set(keys), body)

    def _write_back(
        self, keys: Iterable[str], gone_keys: Iterable[str], body: Callable[[str], bytes]
    ) -> SyncReport:
        """Write ``keys`` (each ``body(key)``), then delete the files of ``gone_keys``, both
        in :func:`write_back_order`; every key is checked before anything is written."""
        targets = {key: self._target(key) for key in write_back_order(keys)}
        gone = {key: self._target(key) for key in write_back_order(gone_keys)}
        written = unchanged = 0
        for key, target in targets.items():
            content = body(key)
            with _os_errors(f"lake {self.root}: cannot write {key}"):
                if _holds(target, content):
                    unchanged += 1
                    continue
                write_atomically(target, content)
            written += 1
        for key, path in gone.items():
            with _os_errors(f"lake {self.root}: cannot delete {key}"):
                if path.is_file():
                    path.unlink()
                    _fsync_directory(path.parent)
                    self._remove_empty_parents(path.parent)
        return SyncReport(written=written, deleted=len(gone), unchanged=unchanged)

    @contextmanager
    def serve(self, bucket: str) -> Iterator[ServedLake]:
        """Serve the lake as moto's (empty, existing) ``bucket`` for the block: each file is
        loaded when the run first names its key or lists a prefix holding it. Call
        :meth:`ServedLake.write_back` at the end of the block to keep what the run did.

        Must be used inside ``mock_aws()``, in the account and region the bucket was made in.
        """
        from moto.s3.models import S3Backend

        served = ServedLake(self, bucket)
        original = S3Backend.list_objects

        def list_objects(
            backend: Any,
            bucket: Any,
            prefix: str | None,
            delimiter: str | None,
            marker: str | None,
            max_keys: int | None,
        ) -> Any:
            if getattr(bucket.keys, "lake", None) is served:
                served.load_listing(prefix or "", delimiter)
            return original(backend, bucket, prefix, delimiter, marker, max_keys)

        with mock.patch.object(S3Backend, "list_objects", list_objects):
            served.attach()
            yield served

    def file_of(self, key: str) -> Path | None:
        """The file that holds the object ``key``, if there is one."""
        try:
            path = self._target(key)
        except (LakeDirError, OSError, ValueError):
            return None
        return path if path.is_file() else None

    def _remove_empty_parents(self, directory: Path) -> None:
        root = self.root.resolve()
        directory = directory.resolve()
        while directory != root and directory.is_relative_to(root) and not any(directory.iterdir()):
            directory.rmdir()
            directory = directory.parent


def _first_file(directory: Path) -> Path | None:
    """One object file under ``directory`` (the first in name order), without a full walk."""
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError:
        return None
    for entry in entries:
        if entry.name.startswith(RESERVED_PREFIX):
            continue
        if entry.is_file(follow_symlinks=False):
            return Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            found = _first_file(Path(entry.path))
            if found is not None:
                return found
    return None


def _files_under(directory: Path) -> Iterator[Path]:
    """Every object file under ``directory``, at any depth."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(RESERVED_PREFIX):
            continue
        if entry.is_file(follow_symlinks=False):
            yield Path(entry.path)
        elif entry.is_dir(follow_symlinks=False):
            yield from _files_under(Path(entry.path))


def _lake_keys_class() -> type:
    from moto.s3.utils import _VersionedKeyStore

    class LakeKeys(_VersionedKeyStore):
        """moto's key store of a bucket, loading an object from its file when first named
        (every lookup, put, copy and delete of a key goes through ``__sgetitem__`` or
        ``__contains__``; listings through ``list_objects``, patched by ``serve``)."""

        lake: ServedLake

        def __sgetitem__(self, key: str) -> list[Any]:
            self.lake.load(key)
            found: list[Any] = super().__sgetitem__(key)
            return found

        def __contains__(self, key: object) -> bool:
            if isinstance(key, str):
                self.lake.load(key)
            return super().__contains__(key)

    return LakeKeys


_LakeKeys: Any = None


class ServedLake:
    """A lake directory behind a moto bucket, loaded as the run goes (:meth:`LocalLake.serve`)."""

    def __init__(self, lake: LocalLake, bucket: str) -> None:
        self.lake = lake
        self.bucket = bucket
        self.loaded: dict[str, Any] = {}  # key -> the object made from its file
        self._seen: set[str] = set()
        self._listed: set[str] = set()  # prefixes whose every file is loaded
        self._lock = threading.RLock()
        self._backend: Any = None
        self._store: Any = None

    def attach(self) -> None:
        """Put the lazy key store in place of the (empty) bucket's."""
        global _LakeKeys
        from moto.s3.models import s3_backends

        if _LakeKeys is None:
            _LakeKeys = _lake_keys_class()
        holders = [
            s3_backends[account]["aws"]
            for account in list(s3_backends)
            if self.bucket in s3_backends[account]["aws"].buckets
        ]
        if len(holders) != 1:
            raise LakeDirError(f"no single mocked bucket {self.bucket} to serve {self.lake.root}")
        self._backend = holders[0]
        fake_bucket = self._backend.get_bucket(self.bucket)
        if len(fake_bucket.keys):
            raise LakeDirError(f"bucket {self.bucket} is not empty: cannot serve {self.lake.root}")
        store = _LakeKeys()
        store.lake = self
        fake_bucket.keys = store
        self._store = store

    def load(self, key: str) -> None:
        """Make the object ``key`` from its file, the first time the key is named."""
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
            path = self.lake.file_of(key)
            if path is None:
                return
            with _os_errors(f"lake {self.lake.root}: cannot read {key}"):
                body = path.read_bytes()
            # put_object looks the key up again: it is seen, so that lookup loads nothing.
            self.loaded[key] = self._backend.put_object(
                self.bucket, key, body, disable_notification=True
            )

    def load_listing(self, prefix: str, delimiter: str | None) -> None:
        """Load what a listing of ``prefix`` shows: with the delimiter ``/``, the files
        directly under it and one file of each folder (so that the folder is listed);
        else every file whose key starts with ``prefix``."""
        with self._lock:
            if any(prefix.startswith(done) for done in self._listed):
                return
            folder, _, start = prefix.rpartition("/")
            directory = self.lake.root / folder if folder else self.lake.root
            if not directory.resolve().is_relative_to(self.lake.root.resolve()):
                return  # no file of the lake has such a key
            if delimiter == "/":
                try:
                    entries = list(os.scandir(directory))
                except OSError:
                    return
                for entry in entries:
                    if not entry.name.startswith(start) or entry.name.startswith(RESERVED_PREFIX):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        path = _first_file(Path(entry.path))
                    else:
                        path = Path(entry.path) if entry.is_file(follow_symlinks=False) else None
                    if path is not None:
                        self.load(path.relative_to(self.lake.root).as_posix())
                return
            for path in _files_under(directory):
                key = path.relative_to(self.lake.root).as_posix()
                if key.startswith(prefix):
                    self.load(key)
            self._listed.add(prefix)

    def write_back(self) -> SyncReport:
        """Write the objects created or changed since the files were loaded, then delete
        the files whose objects are gone (:func:`write_back_order`)."""
        from moto.s3.models import FakeDeleteMarker

        versions: dict[str, list[Any]] = dict.copy(self._store)
        current = {
            key: found[-1]
            for key, found in versions.items()
            if found and not isinstance(found[-1], FakeDeleteMarker)
        }
        changed = [key for key, obj in current.items() if self.loaded.get(key) is not obj]
        gone = [key for key in self.loaded if key not in current]
        report = self.lake._write_back(changed, gone, lambda key: bytes(current[key].value))
        untouched = len(current) - len(changed)
        return SyncReport(report.written, report.deleted, report.unchanged + untouched)
