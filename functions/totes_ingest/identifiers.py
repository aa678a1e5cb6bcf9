"""Table and column names: validation and SQL quoting.

Names arrive from the execution input, so they are checked against a strict pattern
before they reach a query or an S3 key, then quoted as identifiers anyway.
"""

from __future__ import annotations

import re

# PostgreSQL's unquoted identifier rules, lower case, at most NAMEDATALEN - 1 bytes.
_TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def is_valid_table_name(name: object) -> bool:
    return isinstance(name, str) and _TABLE_NAME.fullmatch(name) is not None


def quote_ident(name: str) -> str:
    """Quote an identifier the way PostgreSQL's quote_ident does (always quoted)."""
    return '"' + name.replace('"', '""') + '"'
