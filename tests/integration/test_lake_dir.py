"""The local lake directory is as safe as S3: one run at a time, whole files, a write-back
in the commit protocol's order, and one-line errors for a folder that cannot be written.

Processes are real: a lock holder killed with SIGKILL, a ``totes-ingest run`` killed in
the middle of writing a file of its write-back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pg8000.native
import pyarrow.parquet as pq
import pytest

from tests.command import database_url, totes_ingest
from totes_ingest.local import lake_dir
from totes_ingest.local.seed import seed

UNREACHABLE_URL = "postgresql://ingest:pw@127.0.0.1:1/totesys"

HOLD_THE_LAKE = """
import sys, time
from pathlib import Path
from totes_ingest.local import lake_dir
with lake_dir.locked(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def bucket(aws_env: None) -> Any:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="lake", CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    return s3


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lake ``tmp_path / "lake"`` (killed at the end)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LAKE, str(tmp_path / "lake")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "held\n"
        yield process
    finally:
        process.kill()
        process.wait(timeout=30)


# What writing into a read_only() directory fails with.
READ_ONLY = "Operation not permitted" if os.geteuid() == 0 else "Permission denied"


@contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """``directory`` made read-only for real, even to root (tests run as root here, where
    a chmod stops nothing): ``chattr +i``, the immutable attribute (no entry can be
    created, renamed or removed in it); for other users, ``chmod 0o555``."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"this filesystem cannot make a directory immutable: {made.stderr}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# --- one run at a time ---------------------------------------------------------------------


@pytest.mark.integration
def test_a_held_lake_is_refused_at_once_naming_the_lake_and_the_holder(tmp_path: Path) -> None:
    root = tmp_path / "lake"

    with lake_dir.locked(root), pytest.raises(lake_dir.LakeBusy) as refused, lake_dir.locked(root):
        pass

    assert str(refused.value) == (
        f"lake {root} is in use by another totes-ingest run (pid {os.getpid()}); "
        "try again when it has finished"
    )


@pytest.mark.integration
def test_a_killed_holder_releases_the_lake(holder: subprocess.Popen[str], tmp_path: Path) -> None:
    root = tmp_path / "lake"
    with pytest.raises(lake_dir.LakeBusy, match=f"pid {holder.pid}"), lake_dir.locked(root):
        pass

    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)

    with lake_dir.locked(root) as lake:  # no stale lock, nothing to clean up
        assert lake.root == root


@pytest.mark.e2e
def test_a_second_run_on_a_held_lake_is_refused_before_it_does_anything(
    holder: subprocess.Popen[str], tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    before = files_under(lake)

    # The database cannot be reached: the refusal comes first.
    second = totes_ingest(
        "run", "--database-url", UNREACHABLE_URL, "--lake", str(lake), cwd=tmp_path
    )

    assert second.returncode == 1
    assert second.stderr == (
        f"totes-ingest run: lake {lake} is in use by another totes-ingest run "
        f"(pid {holder.pid}); try again when it has finished\n"
    )
    assert files_under(lake) == before


# --- whole files, in the protocol's order -----------------------------------------------------


@pytest.mark.unit
def test_the_write_back_order_is_staged_then_claims_then_table_keys_oldest_first() -> None:
    keys = [
        "sales_order/2024/01/02/000000000000.parquet",
        "_claims/sales_order/20240101T000000000000.json",
        "payment/2024/01/01/000000000000.parquet",
        "sales_order/2024/01/01/120000000000.parquet",
        "_staging/sales_order/20240101T000000000000-20240102T000000000000.parquet",
        "_claims/sales_order/initial.json",
    ]

    assert lake_dir.write_back_order(keys) == [
        "_staging/sales_order/20240101T000000000000-20240102T000000000000.parquet",
        "_claims/sales_order/20240101T000000000000.json",
        "_claims/sales_order/initial.json",
        "payment/2024/01/01/000000000000.parquet",
        "sales_order/2024/01/01/120000000000.parquet",
        "sales_order/2024/01/02/000000000000.parquet",
    ]


@pytest.mark.integration
def test_a_file_is_replaced_whole_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    target = tmp_path / "a/b/file.parquet"
    lake_dir.write_atomically(target, b"old")

    lake_dir.write_atomically(target, b"new content")

    assert target.read_bytes() == b"new content"
    assert files_under(tmp_path) == ["a/b/file.parquet"]


@pytest.mark.integration
def test_a_killed_runs_temporary_files_are_never_uploaded_and_are_removed(
    bucket: Any, tmp_path: Path
) -> None:
    root = tmp_path / "lake"
    with lake_dir.locked(root):
        pass
    partial = root / "sales_order/2024/01/01" / f"{lake_dir.TEMPORARY_PREFIX}0a1b-x.parquet"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"PAR1 half a file")

    with lake_dir.locked(root) as lake:
        uploaded = lake.upload(bucket, "lake")

    assert uploaded == []
    assert not (root / "sales_order").exists()


@pytest.mark.integration
def test_a_folder_the_write_back_cannot_write_fails_in_one_line_after_the_earlier_steps(
    bucket: Any, tmp_path: Path
) -> None:
    # GIVEN a lake whose sales_order folder is read-only, a staged object gone from the
    # bucket, and a run that staged, claimed and committed a new sales_order window
    root = tmp_path / "lake"
    (root / "sales_order").mkdir(parents=True)
    (root / "_staging").mkdir()
    (root / "_staging/old.parquet").write_bytes(b"staged long ago")
    (root / lake_dir.MARKER).write_text("")
    new = {
        "_staging/sales_order/initial-20240101T000000000000.parquet": b"staged",
        "_claims/sales_order/initial.json": b"{}",
        "sales_order/2024/01/01/000000000000.parquet": b"final",
    }
    with lake_dir.locked(root) as lake, read_only(root / "sales_order"):
        uploaded = lake.upload(bucket, "lake")
        bucket.delete_object(Bucket="lake", Key="_staging/old.parquet")
        for key, body in new.items():
            bucket.put_object(Bucket="lake", Key=key, Body=body)
        # WHEN it is written back
        with pytest.raises(lake_dir.LakeDirError) as failed:
            lake.download(bucket, "lake", uploaded)

    # THEN one line names the lake, the key and why; what came before it in the protocol
    # is written, and nothing is deleted
    assert str(failed.value) == (
        f"lake {root}: cannot write sales_order/2024/01/01/000000000000.parquet: {READ_ONLY}"
    )
    assert files_under(root) == [
        lake_dir.MARKER,
        lake_dir.LOCK,
        "_claims/sales_order/initial.json",
        "_staging/old.parquet",
        "_staging/sales_order/initial-20240101T000000000000.parquet",
    ]


@pytest.mark.e2e
@pytest.mark.parametrize("existing", [True, False], ids=["lake", "new-lake-inside"])
def test_run_on_a_read_only_folder_is_a_one_line_error(existing: bool, tmp_path: Path) -> None:
    folder = tmp_path / "readonly"
    with lake_dir.locked(folder):
        pass
    lake = folder if existing else folder / "lake"

    with read_only(folder):
        process = totes_ingest(
            "run", "--database-url", UNREACHABLE_URL, "--lake", str(lake), cwd=tmp_path
        )

    problem = f"lake {lake} is not writable" if existing else f"cannot use {lake} as a lake"
    assert process.returncode == 1
    assert process.stderr == f"totes-ingest run: {problem}: {READ_ONLY}\n"


# --- served lazily: a run reads what it names, writes back what it changed ----------------


def lake_of(root: Path, files: dict[str, bytes]) -> Path:
    """A marked lake directory holding ``files`` (key -> content)."""
    root.mkdir(parents=True)
    (root / lake_dir.MARKER).write_text("")
    for key, body in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(body)
    return root


HISTORY = {
    "_claims/sales_order/initial.json": b"claim 1",
    "_claims/sales_order/20240101T000000000000.json": b"claim 2",
    "sales_order/2024/01/01/000000000000.parquet": b"window 1",
    "sales_order/2024/01/02/000000000000.parquet": b"window 2",
    "sales_order/2024/02/01/000000000000.parquet": b"window 3",
    "payment/2024/01/01/000000000000.parquet": b"payment window",
}


@pytest.mark.integration
def test_a_served_lake_loads_only_the_files_whose_keys_the_run_names(
    bucket: Any, tmp_path: Path
) -> None:
    root = lake_of(tmp_path / "lake", HISTORY)

    with lake_dir.locked(root) as lake, lake.serve("lake") as served:
        body = bucket.get_object(Bucket="lake", Key="_claims/sales_order/initial.json")
        head = bucket.head_object(Bucket="lake", Key="payment/2024/01/01/000000000000.parquet")
        with pytest.raises(bucket.exceptions.NoSuchKey):
            bucket.get_object(Bucket="lake", Key="sales_order/2030/01/01/000000000000.parquet")

        assert body["Body"].read() == b"claim 1"
        assert head["ContentLength"] == len(b"payment window")
        assert sorted(served.loaded) == [
            "_claims/sales_order/initial.json",
            "payment/2024/01/01/000000000000.parquet",
        ]


@pytest.mark.integration
def test_a_listing_loads_the_files_under_its_prefix_and_one_per_folder_with_a_delimiter(
    bucket: Any, tmp_path: Path
) -> None:
    root = lake_of(tmp_path / "lake", HISTORY)

    with lake_dir.locked(root) as lake, lake.serve("lake") as served:
        months = bucket.list_objects_v2(Bucket="lake", Prefix="sales_order/2024/", Delimiter="/")
        january = bucket.list_objects_v2(Bucket="lake", Prefix="sales_order/2024/01/")

        assert [p["Prefix"] for p in months["CommonPrefixes"]] == [
            "sales_order/2024/01/",
            "sales_order/2024/02/",
        ]
        assert [item["Key"] for item in january["Contents"]] == [
            "sales_order/2024/01/01/000000000000.parquet",
            "sales_order/2024/01/02/000000000000.parquet",
        ]
        # The claims and the payment table were never listed: not read.
        assert sorted(served.loaded) == [
            "sales_order/2024/01/01/000000000000.parquet",
            "sales_order/2024/01/02/000000000000.parquet",
            "sales_order/2024/02/01/000000000000.parquet",
        ]


@pytest.mark.integration
def test_a_conditional_put_sees_a_file_the_run_had_not_read(bucket: Any, tmp_path: Path) -> None:
    root = lake_of(tmp_path / "lake", HISTORY)

    taken = pytest.raises(botocore.exceptions.ClientError, match="PreconditionFailed")
    with lake_dir.locked(root) as lake, lake.serve("lake"), taken:
        bucket.put_object(
            Bucket="lake",
            Key="_claims/sales_order/initial.json",
            Body=b"a second claim",
            IfNoneMatch="*",
        )

    assert (root / "_claims/sales_order/initial.json").read_bytes() == b"claim 1"


@pytest.mark.integration
def test_objects_changed_during_a_served_run_land_in_the_lake_and_others_are_left_alone(
    bucket: Any, tmp_path: Path
) -> None:
    # GIVEN a lake with a history, served to a run
    root = lake_of(tmp_path / "lake", HISTORY)
    untouched = root / "payment/2024/01/01/000000000000.parquet"
    before = untouched.stat().st_mtime_ns

    with lake_dir.locked(root) as lake, lake.serve("lake") as served:
        # WHEN the run writes a new key, replaces one it never read, copies, reads one,
        # and deletes one it never read
        bucket.put_object(Bucket="lake", Key="_staging/sales_order/new.parquet", Body=b"staged")
        bucket.put_object(Bucket="lake", Key="_claims/sales_order/initial.json", Body=b"claim 1b")
        bucket.copy_object(
            Bucket="lake",
            Key="sales_order/2024/03/01/000000000000.parquet",
            CopySource={"Bucket": "lake", "Key": "_staging/sales_order/new.parquet"},
        )
        bucket.get_object(Bucket="lake", Key="sales_order/2024/02/01/000000000000.parquet")
        bucket.delete_object(Bucket="lake", Key="sales_order/2024/01/01/000000000000.parquet")
        report = served.write_back()

    # THEN what it wrote is in the lake, what it deleted is gone, and the rest is as it was
    assert (report.written, report.deleted, report.unchanged) == (3, 1, 1)
    assert (root / "_staging/sales_order/new.parquet").read_bytes() == b"staged"
    assert (root / "sales_order/2024/03/01/000000000000.parquet").read_bytes() == b"staged"
    assert (root / "_claims/sales_order/initial.json").read_bytes() == b"claim 1b"
    assert not (root / "sales_order/2024/01/01").exists()
    assert untouched.read_bytes() == b"payment window"
    assert untouched.stat().st_mtime_ns == before
    assert "payment/2024/01/01/000000000000.parquet" not in served.loaded
    assert files_under(root) == sorted(
        [
            lake_dir.MARKER,
            lake_dir.LOCK,
            "_claims/sales_order/20240101T000000000000.json",
            "_claims/sales_order/initial.json",
            "_staging/sales_order/new.parquet",
            "payment/2024/01/01/000000000000.parquet",
            "sales_order/2024/01/02/000000000000.parquet",
            "sales_order/2024/02/01/000000000000.parquet",
            "sales_order/2024/03/01/000000000000.parquet",
        ]
    )


@pytest.mark.integration
def test_a_listing_outside_the_lake_finds_nothing(bucket: Any, tmp_path: Path) -> None:
    lake_of(tmp_path / "outside", {"secret.txt": b"not the lake's"})
    root = lake_of(tmp_path / "lake", HISTORY)

    with lake_dir.locked(root) as lake, lake.serve("lake") as served:
        listed = bucket.list_objects_v2(Bucket="lake", Prefix="../outside/")

        assert listed.get("Contents", []) == []
        assert served.loaded == {}


@pytest.mark.integration
def test_a_served_lake_never_loads_the_directorys_own_files(bucket: Any, tmp_path: Path) -> None:
    root = lake_of(tmp_path / "lake", {"currency/2024/01/01/000000000000.parquet": b"c"})

    with lake_dir.locked(root) as lake, lake.serve("lake") as served:
        listed = bucket.list_objects_v2(Bucket="lake")
        with pytest.raises(bucket.exceptions.NoSuchKey):
            bucket.get_object(Bucket="lake", Key=lake_dir.MARKER)

        assert [item["Key"] for item in listed["Contents"]] == [
            "currency/2024/01/01/000000000000.parquet"
        ]
        assert list(served.loaded) == ["currency/2024/01/01/000000000000.parquet"]


# --- a run killed in the middle of its write-back ----------------------------------------------

TABLES = ("currency", "department", "staff")

# Kills this process in the middle of the Nth file of the write-back (the marker, written
# when the lake is locked, is not counted): the temporary file is cut to half its bytes,
# as a kill during the write would leave it, then SIGKILL. First it checks that the lock
# is held at that moment, from a second open file of its own.
KILL_DURING_WRITE_BACK = """
import fcntl, os, signal, sys
KILL_AT, LOCK = {kill_at}, {lock!r}
real_fsync, files = os.fsync, []

def fsync(fd):
    name = os.path.basename(os.readlink(f"/proc/self/fd/{{fd}}"))
    if name.startswith(".totes-tmp-") and not name.endswith("-.totes-lake"):
        files.append(name)
        if len(files) == KILL_AT:
            probe = os.open(LOCK, os.O_RDONLY)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print("lock held during the write-back", file=sys.stderr, flush=True)
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(fd)

os.fsync = fsync
"""


def assert_only_whole_files(root: Path) -> list[Path]:
    """Every object file reads back whole; the temporary files found."""
    temporaries = []
    for path in root.rglob("*"):
        if path.name.startswith(lake_dir.TEMPORARY_PREFIX):
            temporaries.append(path)
        elif path.suffix == ".parquet":
            pq.read_table(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
    return temporaries


def lake_versions(root: Path, table: str) -> list[tuple[Any, Any]]:
    versions = []
    for path in sorted((root / table).rglob("*.parquet")):
        data = pq.read_table(path, columns=[f"{table}_id", "last_updated"]).to_pylist()
        versions.extend((row[f"{table}_id"], row["last_updated"]) for row in data)
    return versions


@pytest.mark.e2e
@pytest.mark.parametrize(
    "kill_at", [2, len(TABLES) + 2], ids=["during-the-claims", "during-the-table-keys"]
)
def test_a_run_killed_during_its_write_back_leaves_whole_files_and_the_next_run_is_exact(
    kill_at: int, conn: pg8000.native.Connection, db_settings: dict[str, Any], tmp_path: Path
) -> None:
    # GIVEN a seeded database, and a first run killed in the middle of one file of its
    # write-back (claims are written first, then the tables' keys)
    seed(conn, 0.01)
    lake = tmp_path / "lake"
    run = ("run", "--database-url", database_url(db_settings), "--lake", str(lake))
    run += ("--tables", ",".join(TABLES))
    prelude = KILL_DURING_WRITE_BACK.format(kill_at=kill_at, lock=str(lake / lake_dir.LOCK))

    killed = totes_ingest(*run, cwd=tmp_path, prelude=prelude)

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "lock held during the write-back" in killed.stderr
    # THEN the folder holds whole files only, and the cut one under a temporary name
    assert len(assert_only_whole_files(lake)) == 1

    # WHEN the next run runs
    after = totes_ingest(*run, cwd=tmp_path)

    # THEN it succeeds, and every row version is in the lake exactly once
    assert after.returncode == 0, after.stderr
    assert assert_only_whole_files(lake) == []
    for table in TABLES:
        versions = lake_versions(lake, table)
        expected = conn.run(f"SELECT {table}_id, last_updated FROM {table}")
        assert len(versions) == len(set(versions)), f"{table}: a version twice"
        assert set(versions) == {tuple(row) for row in expected}, table
