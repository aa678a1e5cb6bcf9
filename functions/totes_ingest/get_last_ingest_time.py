"""The watermark of a table: the end time encoded in its newest lake key."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from totes_ingest import aws
from totes_ingest.aws import lake_errors
from totes_ingest.generate_file_key import parse_file_key
from totes_ingest.identifiers import is_valid_table_name


def get_latest_filename(s3_client: Any, bucket_name: str, table_name: str) -> str | None:
    """Newest lake key of ``table_name`` in ``bucket_name``, or None if it has none.

    Lists under ``table_name + "/"`` (so ``payment`` never sees ``payment_type/``) and
    only counts keys of the lake's own form, so a stray object cannot move the watermark.
    Rather than list a history that grows by a key every run, it descends the
    ``yyyy/mm/dd/`` folders newest first (a handful of small listings, each followed past
    1,000 entries) and lists only the newest day that holds a lake key.
    """
    if not is_valid_table_name(table_name):
        raise ValueError(f"not a valid table name: {table_name!r}")
    with lake_errors("list", table=table_name):
        newest = _newest_in(s3_client, bucket_name, table_name, f"{table_name}/", _FOLDERS)
    return newest


# The date folders below a table's prefix, from the top: yyyy/, mm/, dd/.
_FOLDERS = (re.compile(r"[0-9]{4}/"), re.compile(r"[0-9]{2}/"), re.compile(r"[0-9]{2}/"))


def _newest_in(
    s3: Any, bucket: str, table: str, prefix: str, folders: tuple[re.Pattern[str], ...]
) -> str | None:
    paginator = s3.get_paginator("list_objects_v2")
    if not folders:
        keys = (
            item["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        )
        valid = [key for key in keys if (parsed := parse_file_key(key)) and parsed[0] == table]
        return max(valid, default=None)
    children = [
        common["Prefix"]
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        for common in page.get("CommonPrefixes", [])
        if folders[0].fullmatch(common["Prefix"][len(prefix) :])
    ]
    for child in sorted(children, reverse=True):
        newest = _newest_in(s3, bucket, table, child, folders[1:])
        if newest is not None:
            return newest
    return None


def get_last_ingest_time(
    bucket_name: str, table_name: str, s3_client: Any | None = None
) -> datetime | None:
    """End time of the last committed window of ``table_name``; None: ingest everything."""
    client = s3_client if s3_client is not None else aws.s3_client()
    key = get_latest_filename(client, bucket_name, table_name)
    if key is None:
        return None
    parsed = parse_file_key(key)
    assert parsed is not None  # get_latest_filename only returns parseable keys
    return parsed[1]
