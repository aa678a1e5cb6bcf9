"""read_ahead: map's results in map's order, with a bounded number of calls in flight."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from totes_ingest.read_ahead import read_ahead

pytestmark = pytest.mark.unit


def test_results_come_in_the_items_order_whatever_finishes_first() -> None:
    def slow_for_small(n: int) -> int:
        time.sleep(0.002 * (10 - n))
        return n * n

    assert list(read_ahead(slow_for_small, range(10), 4)) == [n * n for n in range(10)]


def test_no_more_than_ahead_calls_run_at_once() -> None:
    running, peak, lock = 0, 0, threading.Lock()

    def call(n: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.005)
        with lock:
            running -= 1
        return n

    assert list(read_ahead(call, range(20), 3)) == list(range(20))
    assert 1 < peak <= 3


def test_an_error_is_raised_where_its_item_is_reached() -> None:
    def fails_at_three(n: int) -> int:
        if n == 3:
            raise ValueError("three")
        return n

    results = read_ahead(fails_at_three, range(10), 4)

    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="three"):
        next(results)


def test_a_consumer_that_stops_early_sees_no_later_error_and_no_more_calls_start() -> None:
    started: list[int] = []

    def call(n: int) -> int:
        started.append(n)
        if n >= 5:
            raise ValueError("never reached")
        return n

    assert list(itertools.islice(read_ahead(call, itertools.count(), 2), 2)) == [0, 1]
    assert max(started) <= 3  # two ahead of what was used, never the endless rest


def test_ahead_of_one_is_plain_map_on_this_thread() -> None:
    threads = set()

    def call(n: int) -> int:
        threads.add(threading.get_ident())
        return n

    assert list(read_ahead(call, range(5), 1)) == list(range(5))
    assert threads == {threading.get_ident()}
