"""What the handlers' tests pass for Lambda's context object, and the sample events."""

from __future__ import annotations

from pathlib import Path

EVENTS = Path(__file__).resolve().parents[1] / "events"


class Context:
    function_name = "test"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:eu-west-2:123456789012:function:test"
    aws_request_id = "00000000-0000-0000-0000-000000000000"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000
