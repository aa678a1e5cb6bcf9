"""`seed` tells what it is doing while it works (a million orders take many seconds)."""

from __future__ import annotations

from typing import Any

import pytest

from totes_ingest.local.seed import seed

pytestmark = pytest.mark.integration


def test_seed_reports_each_step_as_it_starts(conn: Any) -> None:
    heard: list[str] = []

    seed(conn, 0.01, progress=heard.append)

    assert heard == [
        "reference tables",
        "design: 5 rows",
        "sales_order: 100 rows",
        "purchase_order: 40 rows",
        "transaction: 140 rows",
        "payment: 140 rows",
        "indexes and foreign keys",
        "commit",
        "analyze",
    ]


def test_seed_reports_on_stderr_by_default(conn: Any, capsys: pytest.CaptureFixture[str]) -> None:
    seed(conn, 0.01)

    captured = capsys.readouterr()
    assert "  sales_order: 100 rows\n" in captured.err
    assert captured.out == ""
