"""The re-read overlap: versions below a window's start that the lake does not hold yet.

A window also reads the cursor values ``[reread_from, start)`` (see ``cursor``): the
re-read overlap after a writer the end bound could not see, and the repeated hour after a
fall-back. Of the rows there, only those whose (key, cursor) pair no committed file of
the table holds are new. The lake's pairs are read from just the files whose cursor range
reaches the overlap, and from those files just the key and cursor columns (ranged GETs of
the Parquet footer and two column chunks); the source's pairs come from the window's own
snapshot, with each row's ``ctid``, so the new rows are then copied by ``ctid``.

A table without a key (no primary key, no unique index over NOT NULL columns) cannot tell
a new version from an ingested one: it gets no overlap (``start_run`` refuses one whose
cursor needs it to be exact).
"""

from __future__ import annotations

import io
import itertools
import re
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from totes_ingest.aws import lake_errors
from totes_ingest.errors import LakeError
from totes_ingest.identifiers import quote_ident
from totes_ingest.lake import Lake
from totes_ingest.read_ahead import read_ahead
from totes_ingest.source import CURSOR_COLUMN, SourceTable

# A row's address: its ctid and its relation's oid (a partition's, for a partitioned
# table: a ctid is unique within one relation only), as pairs_query writes it.
_CTID = re.compile(r"\((\d+),(\d+)\)@(\d+)", re.ASCII)
_READ_AHEAD = 1 << 20
FILES_AHEAD = 8  # files whose requests are in flight at once (read_ahead)


class S3RangeFile(io.RawIOBase):
    """A seekable, read-only view of one S3 object, read with ranged GETs."""

    def __init__(self, s3: Any, bucket: str, key: str, *, table: str) -> None:
        self._s3, self._bucket, self._key, self._table = s3, bucket, key, table
        with lake_errors(f"head of {key}", table=table):
            self._size = int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        size = min(len(buffer), self._size - self._pos)
        if size <= 0:
            return 0
        span = f"bytes={self._pos}-{self._pos + size - 1}"
        with lake_errors(f"read of {self._key}", table=self._table):
            data = self._s3.get_object(Bucket=self._bucket, Key=self._key, Range=span)["Body"]
            chunk = data.read()
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


def lake_versions(
    lake: Lake,
    table: SourceTable,
    since: datetime,
    before: datetime,
    *,
    staged: Iterable[str] = (),
) -> pa.Table:
    """``(key columns as text, cursor)`` of the lake's versions with a cursor value in
    ``[since, before)``, from the committed files whose range reaches ``since``, and from
    the ``staged`` objects (windows to be committed before this one). A staged object
    gone was committed (read next, from the history) or will never be (nor this one)."""
    present = [key for key in staged if lake.exists(key, table=table.name)]
    parts = list(lake_version_batches(lake, table, since, before, keys=present))
    parts += lake_version_batches(lake, table, since, before)
    if not parts:
        return _empty(table)
    return pa.concat_tables(parts)


def lake_version_batches(
    lake: Lake,
    table: SourceTable,
    since: datetime | None,
    before: datetime | None,
    *,
    keys: Iterable[str] | None = None,
) -> Iterator[pa.Table]:
    """:func:`lake_versions` one row group at a time.

    ``since`` None: every committed file; ``before`` None: no upper bound. ``keys``: read
    these objects instead of the committed history (the audit's repair objects). The
    next ``FILES_AHEAD`` files' claim checks, footers and first row groups are read
    while one is used (``read_ahead``); memory: that many row groups' two columns.
    """
    columns = [*table.key, CURSOR_COLUMN]
    files: Iterable[str]
    if keys is not None:
        files = keys
    else:
        files = (
            key
            for key, _ in itertools.takewhile(
                lambda found: since is None or found[1].cursor_end > since,
                lake.committed(table.name, ahead=FILES_AHEAD),
            )
        )

    def first_group(key: str) -> tuple[pq.ParquetFile, pa.Table | None]:
        source = io.BufferedReader(
            S3RangeFile(lake.s3, lake.bucket, key, table=table.name), buffer_size=_READ_AHEAD
        )
        parquet = pq.ParquetFile(source)
        absent = [c for c in columns if c not in parquet.schema_arrow.names]
        if absent:
            raise LakeError(
                f"{key} lacks the key columns {absent}: cannot tell ingested versions apart",
                table=table.name,
            )
        return parquet, parquet.read_row_group(
            0, columns=columns
        ) if parquet.num_row_groups else None

    for parquet, first in read_ahead(first_group, files, FILES_AHEAD):
        for group in range(parquet.num_row_groups):
            read = (
                first
                if group == 0 and first is not None
                else parquet.read_row_group(group, columns=columns)
            )
            cursor = read.column(CURSOR_COLUMN)
            keep = None
            if since is not None:
                keep = pc.greater_equal(cursor, _scalar(since, cursor.type))
            if before is not None:
                below = pc.less(cursor, _scalar(before, cursor.type))
                keep = below if keep is None else pc.and_(keep, below)
            yield _normalised(read if keep is None else read.filter(keep), table)


# Each key column's text, written by PostgreSQL exactly as ``key_text`` writes the lake's
# Arrow value of it (the two are compared as text); any other type: its own ``::text``.
_KEY_TEXT: Final = {
    "bpchar": "concat({})",  # padded, as the lake holds it (::text strips the padding)
    "date": "to_char({}, 'YYYY-MM-DD')",
    "timestamp": "to_char({}, 'YYYY-MM-DD HH24:MI:SS.US')",
    "timestamptz": "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || 'Z'",
    "time": "to_char({}, 'HH24:MI:SS.US')",
    "bytea": "encode({}, 'hex')",
    "interval": "concat((extract(year FROM {0}) * 12 + extract(month FROM {0}))::int8, ',',"
    " extract(day FROM {0})::int8, ',', ((extract(hour FROM {0}) * 60 + extract(minute FROM {0}))"
    " * 60000000 + extract(microseconds FROM {0}))::int8)",
}


def key_text_sql(column: str, type_name: str | None) -> str:
    """SQL: the text of key ``column`` of type ``type_name`` that :func:`key_text` gives."""
    template = _KEY_TEXT.get(type_name or "", "{}::text")
    return template.format(quote_ident(column))


def pairs_query(table: SourceTable, predicate: str) -> str:
    """One text value: the CSV of ``(ctid, key columns as text, cursor)`` of the rows
    matching ``predicate`` (NULL if none). Aggregated in the server, it arrives as one
    message instead of one per row, which pg8000 would dispatch one by one. A NULL
    cursor is an empty field (the row is still there: its key is not deleted)."""
    types = dict(zip(table.key, table.key_types, strict=False))
    keys = (key_text_sql(c, types.get(c)) for c in table.key)
    fields = [
        "'\"' || ctid::text || '@' || tableoid::int8 || '\"'",
        *(f"'\"' || replace({k}, '\"', '\"\"') || '\"'" for k in keys),
        f"coalesce({quote_ident(CURSOR_COLUMN)}::text, '')",
    ]
    row = " || ',' || ".join(fields)
    return (
        f"SELECT string_agg({row}, E'\\n') || E'\\n' "  # nosec B608
        f"FROM {table.relation} WHERE {predicate}"
    )


def missing_ctids(
    source_csv: bytes, table: SourceTable, in_lake: pa.Table, cursor_type: pa.DataType
) -> list[str]:
    """``ctid`` of each source row of ``source_csv`` (the output of :func:`pairs_query`)
    whose (key, cursor) pair is not in ``in_lake``."""
    if not source_csv:
        return []
    source = source_pairs(source_csv, table, cursor_type)
    return sorted_ctids(absent_pairs(source, in_lake, table))


def source_pairs(source_csv: bytes, table: SourceTable, cursor_type: pa.DataType) -> pa.Table:
    """``(ctid, key columns as text, cursor)`` of the output of :func:`pairs_query`."""
    names = ["ctid", *table.key, CURSOR_COLUMN]
    if not source_csv:
        return pa.table(
            {name: pa.array([], pa.string()) for name in names[:-1]}
            | {CURSOR_COLUMN: pa.array([], cursor_type)}
        )
    types = {name: pa.string() for name in names[:-1]} | {CURSOR_COLUMN: cursor_type}
    return pacsv.read_csv(
        pa.py_buffer(source_csv),
        read_options=pacsv.ReadOptions(column_names=names, block_size=len(source_csv) + 1),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=types, strings_can_be_null=False, quoted_strings_can_be_null=False
        ),
    )


def absent_pairs(source: pa.Table, in_lake: pa.Table, table: SourceTable) -> pa.Table:
    """The rows of ``source`` (see :func:`source_pairs`) whose (key, cursor) pair
    ``in_lake`` does not hold."""
    names = [*table.key, CURSOR_COLUMN]
    lake = in_lake.cast(pa.schema([pa.field(n, source.schema.field(n).type) for n in names]))
    return source.join(lake, keys=names, join_type="left anti", use_threads=False)


def sorted_ctids(rows: pa.Table) -> list[str]:
    """The row addresses (``ctid@tableoid``) of ``rows``, checked, in physical order."""
    ctids = rows.column("ctid").to_pylist()
    bad = [c for c in ctids if not isinstance(c, str) or _CTID.fullmatch(c) is None]
    if bad:
        raise ValueError(f"unexpected ctid {bad[0]!r}")
    return sorted(ctids, key=_address)


def _address(text: str) -> tuple[int, int, int]:
    match = _CTID.fullmatch(text)
    if match is None:
        raise ValueError("not a ctid")
    block, item, relation = (int(n) for n in match.groups())
    return relation, block, item


def ctid_predicate(ctids: list[str], alias: str) -> str:
    """SQL: the rows of these addresses (checked, so safe as literals) of the relation
    aliased ``alias``: each relation's (each partition's) ``ctid`` values."""
    by_relation: dict[int, list[str]] = {}
    for relation, block, item in map(_address, ctids):
        by_relation.setdefault(relation, []).append(f'"({block},{item})"')
    if not by_relation:
        return "FALSE"
    return " OR ".join(
        f"({alias}.tableoid = {relation} AND {alias}.ctid = ANY('{{{','.join(tids)}}}'::tid[]))"
        for relation, tids in sorted(by_relation.items())
    )


_EPOCH: Final = datetime(1970, 1, 1)
_PER_SECOND: Final = {"us": 1, "ns": 1000}  # timestamp units that hold a datetime exactly


def _scalar(moment: datetime, arrow_type: pa.DataType) -> pa.Scalar:
    """``moment`` as a scalar of the timestamp type ``arrow_type``.

    Built from its int64 value, since ``pa.scalar`` of a Python object imports pandas when
    it is installed (0.3 s and 40 MB for one comparison bound).
    """
    if getattr(arrow_type, "tz", None):
        moment = moment.replace(tzinfo=UTC)
    scale = _PER_SECOND.get(getattr(arrow_type, "unit", ""))
    if scale is None:
        return pa.scalar(moment, type=arrow_type)
    naive = moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
    value = (naive - _EPOCH) // timedelta(microseconds=1) * scale
    data = pa.py_buffer(value.to_bytes(8, "little", signed=True))
    return pa.Array.from_buffers(arrow_type, 1, [None, data])[0]


def _normalised(read: pa.Table, table: SourceTable) -> pa.Table:
    """Key columns as text (:func:`key_text`); the cursor as it is."""
    arrays = [key_text(_whole(read.column(name)), table.name) for name in table.key]
    cursor = _whole(read.column(CURSOR_COLUMN))
    return pa.Table.from_arrays([*arrays, cursor], names=[*table.key, CURSOR_COLUMN])


def _whole(column: pa.ChunkedArray) -> pa.Array:
    """One array of the column's chunks. A column of no chunk (a filter that kept no row)
    is an empty array made from its type: ``combine_chunks`` of no chunk imports pandas."""
    if column.num_chunks == 0:
        return pa.nulls(0, column.type)
    return column.combine_chunks()


# The portable mapping of interval (pg_types): PostgreSQL's own three fields.
_INTERVAL_FIELDS: Final = ("months", "days", "microseconds")


def _is_interval(kind: pa.DataType) -> bool:
    return pa.types.is_struct(kind) and tuple(f.name for f in kind) == _INTERVAL_FIELDS


def key_text(array: pa.Array, table: str) -> pa.Array:
    """A key column of the lake as the text :func:`key_text_sql` has PostgreSQL write."""
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return array.cast(pa.string())
    if isinstance(kind, pa.BaseExtensionType) and kind.extension_name == "arrow.uuid":
        values = array.storage.to_pylist()
        return pa.array([None if v is None else str(uuid.UUID(bytes=v)) for v in values])
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return pa.array([None if v is None else v.hex() for v in array.to_pylist()], pa.string())
    if _is_interval(kind):
        return pa.array(
            [
                None if v is None else ",".join(str(v[f]) for f in _INTERVAL_FIELDS)
                for v in array.to_pylist()
            ],
            pa.string(),
        )
    if pa.types.is_timestamp(kind) and kind.unit != "us":
        array = pc.cast(array, pa.timestamp("us", tz=kind.tz))
    try:
        return pc.cast(array, pa.string())
    except pa.ArrowException as e:
        raise LakeError(
            f"a key column of type {kind} has no text to compare: {e}", table=table
        ) from e


def key_values(text: pa.Array, arrow_type: pa.DataType, table: str) -> pa.Array:
    """The inverse of :func:`key_text`: key text back in the data files' type."""
    if text.type == arrow_type:
        return text
    values = text.to_pylist()
    if isinstance(arrow_type, pa.BaseExtensionType) and arrow_type.extension_name == "arrow.uuid":
        storage = [None if v is None else uuid.UUID(v).bytes for v in values]
        return pa.ExtensionArray.from_storage(
            arrow_type, pa.array(storage, arrow_type.storage_type)
        )
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return pa.array([None if v is None else bytes.fromhex(v) for v in values], arrow_type)
    if _is_interval(arrow_type):
        return pa.array(
            [
                None
                if v is None
                else dict(zip(_INTERVAL_FIELDS, map(int, v.split(",")), strict=True))
                for v in values
            ],
            arrow_type,
        )
    try:
        return pc.cast(text, arrow_type)
    except pa.ArrowException as e:
        raise LakeError(f"a key of type {arrow_type} cannot be read back: {e}", table=table) from e


def _empty(table: SourceTable) -> pa.Table:
    return pa.table(
        {
            **{name: pa.array([], pa.string()) for name in table.key},
            CURSOR_COLUMN: pa.array([], pa.timestamp("us")),
        }
    )
