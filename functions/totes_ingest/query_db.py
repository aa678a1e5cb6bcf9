"""Run one query and return its rows as JSON-like dictionaries (small results only).

The extract path streams instead (see ``extract``); this is the seed's convenience for
look-ups and small tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from totes_ingest.db_errors import source_errors
from totes_ingest.observability import logger


def query_db(
    sql_string: str,
    connect_to_db: Callable[[], Any],
    close_db_connection: Callable[[Any], None],
    dict_name: str = "response",
    **kwargs: Any,
) -> dict[str, Any]:
    """Run ``sql_string`` (with ``:name`` parameters from ``kwargs``).

    ``dict_name=""`` returns the first row as ``{column: value}`` (``{}`` if none);
    otherwise ``{dict_name: [{column: value}, ...]}``. Logs WARNING on an empty result.
    """
    conn = connect_to_db()
    try:
        with source_errors("query"):
            rows = conn.run(sql_string, **kwargs)
        columns = [column["name"] for column in conn.columns or []]
    finally:
        close_db_connection(conn)
    if not rows:
        logger.warning("Query returned no rows", extra={"dict_name": dict_name})
    if dict_name == "":
        return dict(zip(columns, rows[0], strict=True)) if rows else {}
    return {dict_name: [dict(zip(columns, row, strict=True)) for row in rows]}
