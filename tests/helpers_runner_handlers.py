"""Throwaway Lambda handlers for the local runner's tests (tests/integration/test_local_runner.py).

They stand in for the real handlers so the runner's dispatch, error mapping and timeout
can be tested on a tiny state machine of known behaviour.
"""

from __future__ import annotations

import os
import threading
import time
from decimal import Decimal
from typing import Any

_attempts: dict[str, int] = {}
_lock = threading.Lock()


class BoomError(Exception):
    """A permanent failure the test state machine catches by name."""


class Transient(Exception):
    """A failure the test state machine retries by name."""


def start(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("fail_at_start"):
        raise BoomError(f"cannot start: {event['fail_at_start']}")
    return {
        "items": event["items"],
        "context": {
            "function_name": context.function_name,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "invoked_function_arn": context.invoked_function_arn,
            "aws_request_id": context.aws_request_id,
            "remaining_ms": context.get_remaining_time_in_millis(),
        },
        "env": {name: os.environ.get(name) for name in event.get("env", [])},
    }


def work(event: dict[str, Any], context: Any) -> Any:
    item = event["item"]
    kind, _, arg = item.partition(":")
    if kind == "boom":
        raise BoomError(f"item {item} exploded")
    if kind == "value":
        raise ValueError(f"item {item} is not valid")
    if kind == "flaky":
        with _lock:
            _attempts[arg] = _attempts.get(arg, 0) + 1
            attempt = _attempts[arg]
        if attempt == 1:
            raise Transient(f"item {item} failed once")
        return {"item": item, "attempts": attempt}
    if kind == "sleep":
        time.sleep(float(arg))
    if kind == "decimal":
        return {"item": item, "amount": Decimal("2.50")}
    if kind == "unserialisable":
        return {"item": item, "when": object()}
    return {"item": item, "doubled": item * 2}
