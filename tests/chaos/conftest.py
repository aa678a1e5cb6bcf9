"""Fixtures of the chaos tests: the seed, and the pipeline's logs counted, not printed."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chaos.audit import LogTally
from tests.pgcluster import PrivateCluster
from totes_ingest import config, observability


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
    service_logger.handlers = []
    # On the root logger: the pipeline's lines propagate there, including those of a
    # module-level child logger created before POWERTOOLS_SERVICE_NAME was set.
    logging.getLogger().addHandler(tally)
    try:
        yield tally
    finally:
        logging.getLogger().removeHandler(tally)
        service_logger.handlers = saved


@pytest.fixture(scope="session")
def server_settings() -> Iterator[dict[str, Any]]:
    """The chaos runs on a private cluster that allows two-phase commit (a writer prepares
    its transactions), whatever server the other tests use."""
    with PrivateCluster(max_prepared_transactions=20) as cluster:
        yield cluster.connection_settings
