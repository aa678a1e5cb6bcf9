"""Fixtures of the chaos tests: the seed, and the pipeline's logs counted, not printed."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from tests.chaos.audit import LogTally
from totes_ingest import config, lake, observability


@pytest.fixture
def chaos_seed() -> int:
    value = os.environ.get("TOTES_CHAOS_SEED")
    return int(value) if value else random.SystemRandom().randrange(1, 10**9)


@pytest.fixture
def pipeline_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[LogTally]:
    """The pipeline's log lines counted instead of printed (thousands under chaos), no
    metrics printed, and the end bound's safety margin at its default."""
    monkeypatch.delenv(config.END_TIME_SAFETY_MARGIN_SECONDS, raising=False)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    tally = LogTally()
    service_logger = observability.logger._logger
    saved = list(service_logger.handlers)
    service_logger.handlers = [tally]
    # The lake's child logger is not under the service's logger when the module is
    # imported without POWERTOOLS_SERVICE_NAME set (as here): count its lines too.
    lake_logger = lake.logger._logger
    detached = not lake_logger.name.startswith(f"{service_logger.name}.")
    if detached:
        lake_logger.addHandler(tally)
    try:
        yield tally
    finally:
        service_logger.handlers = saved
        if detached:
            lake_logger.removeHandler(tally)
