"""The watermark of a table: the end of its newest committed window (the seed's names).

The listing and the commit protocol that decides what counts as committed live in
``lake``; these are the seed's entry points over it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from totes_ingest import aws
from totes_ingest.identifiers import is_valid_table_name
from totes_ingest.lake import Lake, newest_keys


def get_latest_filename(s3_client: Any, bucket_name: str, table_name: str) -> str | None:
    """Newest well-formed lake key of ``table_name`` (committed or not), or None.

    Lists under ``table_name + "/"`` (so ``payment`` never sees ``payment_type/``).
    Only ``get_last_ingest_time`` decides what moves the watermark.
    """
    if not is_valid_table_name(table_name):
        raise ValueError(f"not a valid table name: {table_name!r}")
    return next(newest_keys(s3_client, bucket_name, table_name), None)


def get_last_ingest_time(
    bucket_name: str, table_name: str, s3_client: Any | None = None
) -> datetime | None:
    """End time (UTC) of the last committed window of ``table_name``; None: ingest all.

    Only keys the commit protocol wrote count: a stray object is ignored.
    """
    if not is_valid_table_name(table_name):
        raise ValueError(f"not a valid table name: {table_name!r}")
    client = s3_client if s3_client is not None else aws.s3_client()
    return Lake(client, bucket_name).resolve_watermark(table_name).end
