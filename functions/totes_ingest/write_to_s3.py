"""Put bytes or a file into the ingest bucket."""

from __future__ import annotations

import io
from typing import Any, BinaryIO

from totes_ingest.aws import lake_errors


def write_to_s3(
    s3_client: Any,
    bucket_name: str,
    file_key: str,
    data: bytes | str | BinaryIO,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``data`` to ``s3://bucket_name/file_key`` (with optional user metadata).

    File objects are streamed with ``upload_fileobj``, which switches to a multipart
    upload for large files, so a table of any size never has to fit in memory.
    """
    if isinstance(data, str):
        data = data.encode()
    stream: BinaryIO = io.BytesIO(data) if isinstance(data, bytes) else data
    with lake_errors(f"write of {file_key}"):
        s3_client.upload_fileobj(
            stream, bucket_name, file_key, ExtraArgs={"Metadata": metadata} if metadata else None
        )
