"""Uploads and commits: one checksummed PutObject for a window's file and one CopyObject
to commit it; parts only for a huge one."""

from __future__ import annotations

import base64
import io
import os
import zlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from tests.conftest import BUCKET
from totes_ingest import write_to_s3 as upload
from totes_ingest.cursor import CursorRange
from totes_ingest.generate_file_key import staging_key
from totes_ingest.lake import Lake, staged_metadata
from totes_ingest.window import Window
from totes_ingest.write_to_s3 import write_to_s3

pytestmark = pytest.mark.integration


@pytest.fixture
def operations(s3: Any) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """The S3 operations the client makes, with their parameters, in order."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        seen.append((model.name, params))

    s3.meta.events.register("provide-client-params.s3.*", record)
    yield seen
    s3.meta.events.unregister("provide-client-params.s3.*", record)


def _crc32(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def _file(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "staged.parquet"
    path.write_bytes(data)
    return path, data


def test_a_file_goes_up_in_one_put_with_the_crc32_of_its_bytes(
    s3: Any, operations: list[tuple[str, dict[str, Any]]], tmp_path: Path
) -> None:
    path, data = _file(tmp_path, (9 << 20) + 7)  # above the SDK's multipart threshold
    with path.open("rb") as staged:
        write_to_s3(s3, BUCKET, "t/k.parquet", staged, metadata={"totes-rows": "3"})
    assert [name for name, _ in operations] == ["PutObject"]
    assert operations[0][1]["ChecksumCRC32"] == _crc32(data)
    got = s3.get_object(Bucket=BUCKET, Key="t/k.parquet")
    assert got["Body"].read() == data
    assert got["Metadata"] == {"totes-rows": "3"}


def test_bytes_and_text_are_put_with_their_crc32(
    s3: Any, operations: list[tuple[str, dict[str, Any]]]
) -> None:
    write_to_s3(s3, BUCKET, "t/b", b"\x00rows\xff")
    write_to_s3(s3, BUCKET, "t/s", "é")
    assert [(n, p["ChecksumCRC32"]) for n, p in operations] == [
        ("PutObject", _crc32(b"\x00rows\xff")),
        ("PutObject", _crc32("é".encode())),
    ]
    assert s3.get_object(Bucket=BUCKET, Key="t/s")["Body"].read() == "é".encode()


def test_a_file_goes_up_whole_wherever_it_stands(s3: Any, tmp_path: Path) -> None:
    # the SDK rewinds a body to its first byte to retry: so the first try starts there too
    path, data = _file(tmp_path, 1000)
    with path.open("rb") as staged:
        staged.seek(10)
        write_to_s3(s3, BUCKET, "t/whole", staged)
    assert s3.get_object(Bucket=BUCKET, Key="t/whole")["Body"].read() == data


def test_a_put_retried_after_reading_its_body_sends_the_whole_file_again(
    s3: Any, tmp_path: Path
) -> None:
    # GIVEN S3 answers the first PutObject, its body read, with a transient 500
    path, data = _file(tmp_path, (1 << 20) + 3)
    answered: list[int] = []

    def fail_once(request: Any, **_: Any) -> AWSResponse | None:
        if answered:
            return None  # moto's turn
        request.body.read()
        answered.append(500)
        error = b"<Error><Code>InternalError</Code><Message>m</Message></Error>"
        return AWSResponse(request.url, 500, {}, _Raw(error))

    s3.meta.events.register_first("before-send.s3.PutObject", fail_once)
    try:
        # WHEN the file is written: the SDK retries
        with path.open("rb") as staged:
            write_to_s3(s3, BUCKET, "t/retried", staged)
    finally:
        s3.meta.events.unregister("before-send.s3.PutObject", fail_once)

    # THEN the second attempt sent the whole file, under the same checksum
    assert answered == [500]
    assert s3.get_object(Bucket=BUCKET, Key="t/retried")["Body"].read() == data


class _Raw(io.BytesIO):
    """An HTTP response body as botocore reads one."""

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.getvalue()


def test_a_file_above_the_single_put_size_goes_up_in_parts(
    s3: Any,
    operations: list[tuple[str, dict[str, Any]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upload, "SINGLE_PUT_BYTES", 1 << 20)
    path, data = _file(tmp_path, (9 << 20) + 7)
    with path.open("rb") as staged:
        write_to_s3(s3, BUCKET, "t/big.parquet", staged, metadata={"totes-rows": "3"})
    names = [name for name, _ in operations]
    assert names[0] == "CreateMultipartUpload"
    assert names.count("UploadPart") == 2
    got = s3.get_object(Bucket=BUCKET, Key="t/big.parquet")
    assert got["Body"].read() == data
    assert got["Metadata"] == {"totes-rows": "3"}


def test_a_staged_file_is_committed_by_one_server_side_copy(
    s3: Any, operations: list[tuple[str, dict[str, Any]]]
) -> None:
    end = datetime(2026, 11, 25, 9, 0, 0, 1)
    window = Window(table="staff", run_id="run-a", start=None, end=end)
    window = window.with_cursor(CursorRange(None, end))
    data = os.urandom((9 << 20) + 7)  # above the SDK's multipart threshold
    staged = staging_key(window.table, window.start, window.end, window.run_id)
    write_to_s3(s3, BUCKET, staged, data, metadata=staged_metadata(window, 1))
    operations.clear()
    result = Lake(s3, BUCKET).commit(window, 1)
    assert result.key
    names = [name for name, _ in operations]
    assert names.count("CopyObject") == 1
    assert "UploadPartCopy" not in names
    assert s3.get_object(Bucket=BUCKET, Key=result.key)["Body"].read() == data
