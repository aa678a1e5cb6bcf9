"""Ordered, bounded read-ahead: the next few items' requests in flight while one is used.

Reading a table's history is a chain of small S3 requests per file (the claim check's
HEAD and GET, the Parquet footer, two column chunks), each a round trip that does no
work of its own; run one after another they dominate the time. ``read_ahead`` runs
``fn`` for up to ``ahead`` items at once on threads (boto3 clients are thread-safe) and
yields the results in the items' order, so a consumer sees exactly what the sequential
``map`` would give, errors included: an item's error is raised when its result is
reached, and an item never reached (the consumer stopped early) raises nothing. Memory:
``ahead`` results at most.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def read_ahead(fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """``map(fn, items)``, with up to ``ahead`` calls running at once (1: no threads)."""
    if ahead <= 1:
        yield from map(fn, items)
        return
    source = iter(items)
    with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="read-ahead") as pool:
        pending: deque[Future[R]] = deque(
            pool.submit(fn, item) for item in itertools.islice(source, ahead)
        )
        try:
            while pending:
                done = pending.popleft()
                pending.extend(pool.submit(fn, item) for item in itertools.islice(source, 1))
                yield done.result()
        finally:
            for future in pending:
                future.cancel()
