"""What the end-to-end tests share: a seeded source, the pipeline's log lines as CloudWatch
gets them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from totes_ingest.local.dburl import Connect
from totes_ingest.local.seed import seed
from totes_ingest.observability import logger as ingest_logger


class Captured(logging.Handler):
    """Every log line of the pipeline, formatted as it would reach CloudWatch."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(ingest_logger._logger.handlers[0].formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    def at(self, level: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["level"] == level]


@pytest.fixture
def logs() -> Iterator[Captured]:
    handler = Captured()
    ingest_logger._logger.addHandler(handler)
    yield handler
    ingest_logger._logger.removeHandler(handler)


@pytest.fixture
def source(db_secret: dict[str, Any], s3: Any, connect: Connect) -> Iterator[Any]:
    """A seeded ToteSys database (scale 1) behind the secret, and an empty ingest bucket."""
    conn = connect(db_secret)
    seed(conn, scale=1)
    yield conn
    conn.close()
