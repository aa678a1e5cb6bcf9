"""One local deployment of the real state machine that can run several executions at once.

``totes_ingest.local.runner.run_state_machine`` deploys, runs one execution and tears the
deployment down; two of them in two threads would nest moto's mocks and the Lambda
dispatch patches unsafely. :class:`LocalDeployment` does the same set-up once (same
template, same ASL, same in-process handlers, built from the runner's own pieces) and
then starts any number of executions side by side: moto runs each execution, and each Map
iteration, in its own thread.

moto's S3 handlers are not safe under concurrent requests, where S3 is: ``PutObject``
with ``If-None-Match: *`` checks for the key and then writes it (two racing claims can
both win), ``DeleteObject`` with ``If-Match`` checks the ETag and then deletes, and a
listing racing a delete fails with a ``KeyError`` naming the deleted key.
:func:`totes_ingest.local.runner.serialized_s3` makes each S3 request one atomic step;
without it an overlap test finds duplicates and failures made by the mock, not by the
pipeline.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from types import TracebackType
from typing import Any

import boto3
from moto import mock_aws

from totes_ingest.local.runner import (
    _STATES_ROLE,
    ExecutionResult,
    FunctionRef,
    Stack,
    TaskReport,
    _aws_is_mocked,
    _deploy_functions,
    _history,
    _lambda_dispatch,
    _quiet_interpreter,
    _role_arn,
    environment_applied,
    load_stack,
    serialized_s3,
    substitute,
)

_POLL_INTERVAL_S = 0.05


class LocalDeployment:
    """The template's state machine and functions, deployed once inside ``mock_aws()``.

    Handlers run in this process with the environment of :func:`run_state_machine`
    (template defaults, then ``os.environ``, then ``environment``), for as long as the
    deployment is open. ``on_task`` sees every Lambda invocation, from moto's threads.
    """

    def __init__(
        self,
        *,
        stack: Stack | None = None,
        environment: Mapping[str, str] | None = None,
        on_task: Callable[[TaskReport], None] | None = None,
    ) -> None:
        self.stack = stack if stack is not None else load_stack()
        self.environment = dict(environment or {})
        self.on_task = on_task
        self._exit = ExitStack()
        self._sfn: Any = None
        self._machine_arn = ""

    def __enter__(self) -> LocalDeployment:
        if not _aws_is_mocked():
            raise RuntimeError("LocalDeployment must be opened inside moto's mock_aws()")
        template_env: dict[str, str] = {}
        for spec in self.stack.functions.values():
            template_env.update(spec.environment)
        effective = {**template_env, **os.environ, **self.environment}
        handler_env = {name: effective[name] for name in {*template_env, *self.environment}}
        with ExitStack() as opening:
            # Nested inside the caller's mock: same mocked account, interpreter switched on.
            opening.enter_context(
                mock_aws(config={"stepfunctions": {"execute_state_machine": True}})
            )
            opening.enter_context(environment_applied(handler_env))
            opening.enter_context(_quiet_interpreter())
            opening.enter_context(serialized_s3())
            iam = boto3.client("iam")
            self._sfn = boto3.client("stepfunctions")
            arns = _deploy_functions(boto3.client("lambda"), iam, self.stack)
            values = {
                key: (arns[value.logical_id] if value.attribute == "Arn" else value.logical_id)
                if isinstance(value, FunctionRef)
                else value
                for key, value in self.stack.substitutions.items()
            }
            self._machine_arn = self._sfn.create_state_machine(
                name=f"{self.stack.state_machine_id}-{uuid.uuid4().hex[:8]}",
                definition=substitute(self.stack.definition, values),
                roleArn=_role_arn(iam, _STATES_ROLE, "states.amazonaws.com"),
            )["stateMachineArn"]
            specs = {spec.logical_id: spec for spec in self.stack.functions.values()}
            opening.enter_context(_lambda_dispatch(specs, self.on_task))
            self._exit = opening.pop_all()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._exit.close()

    def start(self, event: Mapping[str, Any]) -> str:
        """Start an execution with ``event`` as input; its ARN."""
        arn: str = self._sfn.start_execution(
            stateMachineArn=self._machine_arn,
            name=f"chaos-{uuid.uuid4().hex[:12]}",
            input=json.dumps(event),
        )["executionArn"]
        return arn

    def run_together(
        self,
        events: Sequence[Mapping[str, Any]],
        *,
        delays_s: Sequence[float] | None = None,
        timeout_s: float,
    ) -> list[ExecutionResult]:
        """Start one execution per event (the i-th ``delays_s[i]`` seconds after the
        first), wait for all of them, and return their results in the same order.

        An execution still running ``timeout_s`` seconds after the first start is stopped
        and reported as ``TIMED_OUT`` with error ``LocalTimeout``.
        """
        delays = list(delays_s) if delays_s is not None else [0.0] * len(events)
        if len(delays) != len(events):
            raise ValueError("one delay per event")
        started = time.monotonic()
        order = sorted(range(len(events)), key=lambda i: delays[i])
        arns: dict[int, str] = {}
        begun: dict[int, float] = {}
        for i in order:
            pause = started + delays[i] - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            begun[i] = time.monotonic()
            arns[i] = self.start(events[i])
        finished: dict[int, tuple[dict[str, Any] | None, float]] = {}
        deadline = started + timeout_s
        while len(finished) < len(events):
            for i, arn in arns.items():
                if i in finished:
                    continue
                described: dict[str, Any] = self._sfn.describe_execution(executionArn=arn)
                if described["status"] != "RUNNING":
                    finished[i] = (described, time.monotonic() - begun[i])
            if len(finished) < len(events):
                if time.monotonic() >= deadline:
                    for i in set(arns) - set(finished):
                        self._sfn.stop_execution(
                            executionArn=arns[i],
                            error="LocalTimeout",
                            cause=f"no result within {timeout_s:g} s",
                        )
                        finished[i] = (None, time.monotonic() - begun[i])
                    break
                time.sleep(_POLL_INTERVAL_S)
        return [self._result(arns[i], *finished[i], timeout_s) for i in range(len(events))]

    def run(self, event: Mapping[str, Any], *, timeout_s: float) -> ExecutionResult:
        return self.run_together([event], timeout_s=timeout_s)[0]

    def _result(
        self, arn: str, described: dict[str, Any] | None, duration: float, timeout_s: float
    ) -> ExecutionResult:
        return ExecutionResult.of(described, _history(self._sfn, arn), arn, duration, timeout_s)
