"""Put bytes or a file into the ingest bucket."""

from __future__ import annotations

import base64
import io
import os
import zlib
from typing import Any, BinaryIO, Final

from totes_ingest.aws import lake_errors

# Up to this size an object goes up in one PutObject, streamed from its file with its
# CRC32 computed here first; above it, in parts (``upload_fileobj``), each part read into
# memory. A window's file is far below it (MAX_WINDOW_ROWS: about 25 MB for sales_order).
SINGLE_PUT_BYTES: Final = 64 << 20
_BLOCK_BYTES: Final = 1 << 20


def write_to_s3(
    s3_client: Any,
    bucket_name: str,
    file_key: str,
    data: bytes | str | BinaryIO,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``data`` to ``s3://bucket_name/file_key`` (with optional user metadata).

    A file object is written whole, from its first byte wherever it stands (the SDK
    rewinds a body to 0 to retry a request). An object of up to SINGLE_PUT_BYTES is one
    PutObject carrying the CRC32 of its bytes as read here: S3 refuses the upload if what
    arrives differs, and the body streams from the file as it is (the SDK, left to
    compute the checksum itself, re-chunks the body in memory as it sends it). A larger
    file goes up in parts (``upload_fileobj``), so a table of any size never has to fit
    in memory.
    """
    if isinstance(data, str):
        data = data.encode()
    stream: BinaryIO = io.BytesIO(data) if isinstance(data, bytes) else data
    stream.seek(0)
    extra = {"Metadata": metadata} if metadata else {}
    with lake_errors(f"write of {file_key}"):
        if _size(stream) <= SINGLE_PUT_BYTES:
            s3_client.put_object(
                Bucket=bucket_name,
                Key=file_key,
                Body=stream,
                ChecksumCRC32=_crc32(stream),
                **extra,
            )
        else:
            s3_client.upload_fileobj(stream, bucket_name, file_key, ExtraArgs=extra or None)


def _size(stream: BinaryIO) -> int:
    """The bytes of ``stream``, a file or an in-memory buffer (left at 0)."""
    try:
        return os.fstat(stream.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        size = stream.seek(0, io.SEEK_END)
        stream.seek(0)
        return size


def _crc32(stream: BinaryIO) -> str:
    """The base64 CRC32 (big-endian, as S3 takes it) of all of ``stream`` (left at 0)."""
    crc = 0
    while block := stream.read(_BLOCK_BYTES):
        crc = zlib.crc32(block, crc)
    stream.seek(0)
    return base64.b64encode(crc.to_bytes(4, "big")).decode()
