"""The watermark of a table: the end time encoded in its newest lake key."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from totes_ingest.aws import lake_errors, s3_client
from totes_ingest.generate_file_key import parse_file_key
from totes_ingest.identifiers import is_valid_table_name


def get_latest_filename(s3_client: Any, bucket_name: str, table_name: str) -> str | None:
    """Newest lake key of ``table_name`` in ``bucket_name``, or None if it has none.

    Lists under ``table_name + "/"`` (so ``payment`` never sees ``payment_type/``),
    follows every page, and only counts keys of the lake's own form, so a stray object
    cannot move the watermark. Keys sort by time because the format is fixed-width.
    """
    if not is_valid_table_name(table_name):
        raise ValueError(f"not a valid table name: {table_name!r}")
    latest: str | None = None
    paginator = s3_client.get_paginator("list_objects_v2")
    with lake_errors("list", table=table_name):
        for page in paginator.paginate(Bucket=bucket_name, Prefix=f"{table_name}/"):
            for item in page.get("Contents", []):
                key = item["Key"]
                parsed = parse_file_key(key)
                if parsed and parsed[0] == table_name and (latest is None or key > latest):
                    latest = key
    return latest


def get_last_ingest_time(
    bucket_name: str, table_name: str, s3_client: Any | None = None
) -> datetime | None:
    """End time of the last committed window of ``table_name``; None: ingest everything."""
    client = s3_client if s3_client is not None else _default_client()
    key = get_latest_filename(client, bucket_name, table_name)
    if key is None:
        return None
    parsed = parse_file_key(key)
    assert parsed is not None  # get_latest_filename only returns parseable keys
    return parsed[1]


def _default_client() -> Any:
    return s3_client()
