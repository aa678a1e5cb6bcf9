"""A local directory as the stand-in for the ingest bucket between local runs.

Before a run every file under the directory becomes an object of the (moto) bucket, its
key the file's relative path; after the run every object is written back and files whose
objects are gone are deleted. So the lake persists between runs and the next run is
incremental, exactly as against S3.

A marker file tells a lake directory from any other: a directory that is neither empty
nor marked is refused, so a mistyped ``--lake`` never uploads (or deletes) someone's files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

MARKER: Final = ".totes-lake"


class LakeDirError(RuntimeError):
    """The directory cannot serve as a local lake."""


@dataclass(frozen=True)
class SyncReport:
    """Files written and deleted by :func:`download`."""

    written: int
    deleted: int
    unchanged: int


def prepare(root: Path) -> None:
    """Create or check the lake directory and mark it as one."""
    if root.exists() and not root.is_dir():
        raise LakeDirError(f"{root} is not a directory")
    if root.is_dir() and not (root / MARKER).exists() and any(root.iterdir()):
        raise LakeDirError(
            f"{root} is not empty and is not a local lake (no {MARKER} file); "
            "choose a new or empty directory"
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("A local stand-in for the totes-ingest bucket.\n")


def _files(root: Path) -> dict[str, Path]:
    return {
        path.relative_to(root).as_posix(): path
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MARKER
    }


def upload(s3: Any, bucket: str, root: Path) -> list[str]:
    """Put every file under ``root`` into ``bucket`` (key = relative path); the keys."""
    prepare(root)
    files = _files(root)
    for key, path in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    return list(files)


def _target(root: Path, key: str) -> Path:
    target = (root / key).resolve()
    if not target.is_relative_to(root.resolve()) or key.endswith("/"):
        raise LakeDirError(f"object key {key!r} cannot be a file under {root}")
    return target


def download(s3: Any, bucket: str, root: Path, uploaded: list[str]) -> SyncReport:
    """Write every object back under ``root``; delete the uploaded files now gone."""
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    written = unchanged = 0
    for key in keys:
        target = _target(root, key)
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if target.is_file() and target.stat().st_size == len(body) and target.read_bytes() == body:
            unchanged += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
        written += 1
    gone = set(uploaded) - set(keys)
    for key in gone:
        path = _target(root, key)
        path.unlink(missing_ok=True)
        _remove_empty_parents(path.parent, root)
    return SyncReport(written=written, deleted=len(gone), unchanged=unchanged)


def _remove_empty_parents(directory: Path, root: Path) -> None:
    root = root.resolve()
    directory = directory.resolve()
    while directory != root and directory.is_relative_to(root) and not any(directory.iterdir()):
        directory.rmdir()
        directory = directory.parent
