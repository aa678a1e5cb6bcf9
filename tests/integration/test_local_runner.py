"""The local runner: moto interprets a state machine, our process answers its Lambda calls.

A tiny throwaway template and state machine, with handlers defined in this module, pin
down dispatch, error mapping, Retry/Catch by error name, timeouts and history; the last
tests check that the real template loads and wires completely.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from totes_ingest.local.runner import (
    TEMPLATE_PATH,
    FunctionRef,
    InProcessLambda,
    Stack,
    TaskReport,
    TemplateError,
    load_stack,
    run_state_machine,
    substitute,
)

pytestmark = pytest.mark.integration

# The throwaway handlers below are named by this module's own import name, whatever the
# test layout makes it.
HANDLERS = __name__

TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Label: {Type: String, Default: from-template}
  Greeting: {Type: String, Default: hello}
Globals:
  Function:
    Timeout: 30
    MemorySize: 256
    Environment:
      Variables:
        RUNNER_TEST_GREETING: !Ref Greeting
        RUNNER_TEST_BUCKET: !Ref Bucket
        RUNNER_TEST_SUB: !Sub "${AWS::Region}-suffix"
Resources:
  Bucket:
    Type: AWS::S3::Bucket
  StartFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: {handlers}.start
      MemorySize: 512
  WorkFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: {handlers}.work
      Timeout: 2
  Machine:
    Type: AWS::Serverless::StateMachine
    Properties:
      DefinitionUri: machine.asl.json
      DefinitionSubstitutions:
        StartArn: !GetAtt StartFunction.Arn
        WorkArn: !GetAtt [WorkFunction, Arn]
        Label: !Ref Label
      Policies:
        - LambdaInvokePolicy: {FunctionName: !Ref StartFunction}
"""

ASL = {
    "StartAt": "Start",
    "States": {
        "Start": {
            "Type": "Task",
            "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": {"FunctionName": "${StartArn}", "Payload.$": "$"},
            "OutputPath": "$.Payload",
            "Next": "Each",
        },
        "Each": {
            "Type": "Map",
            "ItemsPath": "$.items",
            "ItemSelector": {"item.$": "$$.Map.Item.Value"},
            "ItemProcessor": {
                "ProcessorConfig": {"Mode": "INLINE"},
                "StartAt": "Work",
                "States": {
                    "Work": {
                        "Type": "Task",
                        "Resource": "arn:aws:states:::lambda:invoke",
                        "Parameters": {"FunctionName": "${WorkArn}", "Payload.$": "$"},
                        "OutputPath": "$.Payload",
                        "Retry": [
                            {"ErrorEquals": ["Transient"], "IntervalSeconds": 1, "MaxAttempts": 2}
                        ],
                        "Catch": [
                            {
                                "ErrorEquals": ["BoomError"],
                                "ResultPath": "$.error",
                                "Next": "Caught",
                            },
                            {
                                "ErrorEquals": ["States.ALL"],
                                "ResultPath": "$.error",
                                "Next": "Other",
                            },
                        ],
                        "End": True,
                    },
                    "Caught": {
                        "Type": "Pass",
                        "Parameters": {
                            "item.$": "$.item",
                            "caught.$": "$.error.Error",
                            "cause.$": "$.error.Cause",
                        },
                        "End": True,
                    },
                    "Other": {
                        "Type": "Pass",
                        "Parameters": {
                            "item.$": "$.item",
                            "other.$": "$.error.Error",
                            "cause.$": "$.error.Cause",
                        },
                        "End": True,
                    },
                },
            },
            "ResultPath": "$.results",
            "Next": "Done",
        },
        "Done": {
            "Type": "Pass",
            "Parameters": {
                "results.$": "$.results",
                "context.$": "$.context",
                "env.$": "$.env",
                "label": "${Label}",
            },
            "End": True,
        },
    },
}


# --- throwaway handlers ---------------------------------------------------------------

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


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    (tmp_path / "template.yaml").write_text(TEMPLATE.replace("{handlers}", HANDLERS))
    (tmp_path / "machine.asl.json").write_text(json.dumps(ASL))
    return load_stack(tmp_path / "template.yaml")


def _event(*items: str, env: tuple[str, ...] = ()) -> dict[str, object]:
    return {"items": list(items), "env": list(env)}


def test_load_stack_reads_handlers_settings_and_substitutions(stack: Stack) -> None:
    start, work = stack.functions["StartFunction"], stack.functions["WorkFunction"]

    assert (start.handler, start.memory_mb, start.timeout_s) == (
        f"{HANDLERS}.start",
        512,
        30,
    )
    assert (work.memory_mb, work.timeout_s) == (256, 2)
    # Parameter defaults resolve; references to other resources and !Sub are left out.
    assert start.environment == {"RUNNER_TEST_GREETING": "hello"}
    assert stack.substitutions == {
        "StartArn": FunctionRef("StartFunction", "Arn"),
        "WorkArn": FunctionRef("WorkFunction", "Arn"),
        "Label": "from-template",
    }


def test_runner_dispatches_each_task_to_the_template_handler(aws_env: None, stack: Stack) -> None:
    reports: list[TaskReport] = []

    result = run_state_machine(_event("a", "b"), timeout_s=30, stack=stack, on_task=reports.append)

    assert result.succeeded, result.describe()
    assert result.output["results"] == [
        {"item": "a", "doubled": "aa"},
        {"item": "b", "doubled": "bb"},
    ]
    assert result.output["label"] == "from-template"
    context = result.output["context"]
    assert context["function_name"] == "StartFunction"
    assert context["memory_limit_in_mb"] == 512
    assert context["invoked_function_arn"].endswith(":function:StartFunction")
    assert uuid.UUID(context["aws_request_id"])
    assert 0 < context["remaining_ms"] <= 30_000
    assert sorted(r.function for r in reports) == ["StartFunction", "WorkFunction", "WorkFunction"]
    assert all(r.error is None for r in reports)
    assert any(e["type"] == "ExecutionSucceeded" for e in result.history)


def test_handler_exception_reaches_catch_under_its_class_name(aws_env: None, stack: Stack) -> None:
    result = run_state_machine(_event("ok", "boom", "value"), timeout_s=30, stack=stack)

    assert result.succeeded, result.describe()
    ok, boom, value = result.output["results"]
    assert ok == {"item": "ok", "doubled": "okok"}
    assert boom["caught"] == "BoomError"
    assert value["other"] == "ValueError"
    # The Cause is Lambda's error payload, as a JSON string.
    cause = json.loads(boom["cause"])
    assert cause["errorType"] == "BoomError"
    assert cause["errorMessage"] == "item boom exploded"
    assert any("test_local_runner.py" in line for line in cause["stackTrace"])


def test_retry_by_error_name_runs_the_handler_again(aws_env: None, stack: Stack) -> None:
    item = f"flaky:{uuid.uuid4().hex}"
    reports: list[TaskReport] = []

    result = run_state_machine(_event(item), timeout_s=30, stack=stack, on_task=reports.append)

    assert result.succeeded, result.describe()
    assert result.output["results"] == [{"item": item, "attempts": 2}]
    errors = [r.error["errorType"] for r in reports if r.error]
    assert errors == ["Transient"]


def test_uncaught_error_fails_the_execution_with_error_cause_and_history(
    aws_env: None, stack: Stack
) -> None:
    result = run_state_machine({"fail_at_start": "no luck", "items": []}, timeout_s=30, stack=stack)

    assert result.status == "FAILED"
    assert result.error == "BoomError"
    assert result.cause is not None
    assert json.loads(result.cause)["errorMessage"] == "cannot start: no luck"
    assert [e["type"] for e in result.history][-2:] == ["TaskFailed", "ExecutionFailed"]
    assert "BoomError" in result.describe()


def test_a_succeeded_execution_skips_its_history_when_asked_for_it_on_failure_only(
    aws_env: None, stack: Stack
) -> None:
    result = run_state_machine(_event("a"), timeout_s=30, stack=stack, history="on_failure")

    assert result.succeeded, result.describe()
    assert result.history == []


def test_a_failed_execution_keeps_its_history_when_asked_for_it_on_failure_only(
    aws_env: None, stack: Stack
) -> None:
    result = run_state_machine(
        {"fail_at_start": "no luck", "items": []},
        timeout_s=30,
        stack=stack,
        history="on_failure",
    )

    assert result.status == "FAILED"
    assert [e["type"] for e in result.history][-2:] == ["TaskFailed", "ExecutionFailed"]


def test_result_marshalling_follows_lambda(aws_env: None, stack: Stack) -> None:
    result = run_state_machine(_event("decimal", "unserialisable"), timeout_s=30, stack=stack)

    assert result.succeeded, result.describe()
    decimal, unserialisable = result.output["results"]
    assert decimal == {"item": "decimal", "amount": 2.5}
    assert unserialisable["other"] == "Runtime.MarshalError"


def test_handler_running_past_its_lambda_timeout_fails_as_lambda_would(
    aws_env: None, stack: Stack
) -> None:
    result = run_state_machine(_event("sleep:2.1"), timeout_s=30, stack=stack)

    assert result.succeeded, result.describe()
    assert result.output["results"][0]["other"] == "Sandbox.Timedout"


def test_execution_outliving_the_timeout_is_stopped_and_reported(
    aws_env: None, stack: Stack
) -> None:
    result = run_state_machine(_event("sleep:1.5"), timeout_s=0.3, stack=stack)

    # Stopped at the timeout, not when the handler finished (the deployment's own set-up,
    # seconds on a loaded machine, is not part of the execution's time).
    assert result.duration_s < 1.5
    assert result.status == "TIMED_OUT"
    assert result.error == "LocalTimeout"
    assert result.history
    time.sleep(1.5)  # let the abandoned handler finish before the mock goes away


def test_environment_precedence_and_restoration(
    aws_env: None, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ("RUNNER_TEST_GREETING", "RUNNER_TEST_CALLER", "RUNNER_TEST_EXPLICIT")
    monkeypatch.delenv("RUNNER_TEST_GREETING", raising=False)
    monkeypatch.setenv("RUNNER_TEST_CALLER", "from-caller")
    monkeypatch.setenv("RUNNER_TEST_EXPLICIT", "from-caller")

    result = run_state_machine(
        _event(env=names),
        timeout_s=30,
        stack=stack,
        environment={"RUNNER_TEST_EXPLICIT": "explicit"},
    )

    assert result.succeeded, result.describe()
    assert result.output["env"] == {
        "RUNNER_TEST_GREETING": "hello",  # the template's default
        "RUNNER_TEST_CALLER": "from-caller",
        "RUNNER_TEST_EXPLICIT": "explicit",
    }
    assert "RUNNER_TEST_GREETING" not in os.environ
    assert os.environ["RUNNER_TEST_EXPLICIT"] == "from-caller"


def test_runner_can_be_called_twice_in_one_mock(aws_env: None, stack: Stack) -> None:
    first = run_state_machine(_event("x"), timeout_s=30, stack=stack)
    second = run_state_machine(_event("y"), timeout_s=30, stack=stack)

    assert first.succeeded
    assert second.succeeded
    assert second.output["results"] == [{"item": "y", "doubled": "yy"}]


def test_the_functions_run_in_process_without_a_moto_function_or_role(
    aws_env: None, stack: Stack
) -> None:
    with mock_aws(config={"lambda": {"use_docker": False}}):
        result = run_state_machine(_event("a", "boom"), timeout_s=30, stack=stack)
        functions = boto3.client("lambda").list_functions()["Functions"]
        roles = boto3.client("iam").list_roles()["Roles"]

    assert result.succeeded, result.describe()
    assert result.output["results"][0] == {"item": "a", "doubled": "aa"}
    assert result.output["results"][1]["caught"] == "BoomError"
    assert functions == []
    assert roles == []


def test_invoking_a_function_outside_the_stack_is_lambdas_not_found(stack: Stack) -> None:
    lambda_ = InProcessLambda({spec.logical_id: spec for spec in stack.functions.values()}, None)
    arn = "arn:aws:lambda:eu-west-2:123456789012:function:"

    with pytest.raises(ClientError) as raised:
        lambda_.invoke(FunctionName=f"{arn}Nope", Payload=b"{}")
    assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as raised:
        lambda_.invoke(FunctionName=f"{arn}StartFunction", InvocationType="Event")
    assert raised.value.response["Error"]["Code"] == "InvalidParameterValueException"


def test_runner_refuses_to_run_outside_mock_aws(stack: Stack) -> None:
    with pytest.raises(RuntimeError, match="mock_aws"):
        run_state_machine(_event("a"), timeout_s=5, stack=stack)


def test_the_real_template_wires_every_placeholder_of_the_real_asl() -> None:
    stack = load_stack(TEMPLATE_PATH)

    handlers = {spec.logical_id: spec.handler for spec in stack.functions.values()}
    assert handlers["StartRunFunction"] == "totes_ingest.handlers.start_run.lambda_handler"
    assert len(handlers) == 7
    assert stack.state_machine_id == "IngestStateMachine"
    assert all(isinstance(ref, FunctionRef) for ref in stack.substitutions.values())
    arns = {
        key: f"arn:aws:lambda:eu-west-2:123456789012:function:{key}" for key in stack.substitutions
    }
    json.loads(substitute(stack.definition, arns))
    assert stack.functions["StartRunFunction"].environment["MAX_CONCURRENCY"] == "4"


def test_the_audit_state_machine_is_loaded_by_its_id() -> None:
    stack = load_stack(TEMPLATE_PATH, state_machine_id="AuditStateMachine")

    assert {
        ref.logical_id
        for ref in stack.substitutions.values()  # type: ignore[union-attr]
    } == {"StartRunFunction", "AuditTableFunction", "AuditSummaryFunction"}
    arns = {
        key: f"arn:aws:lambda:eu-west-2:123456789012:function:{key}" for key in stack.substitutions
    }
    assert json.loads(substitute(stack.definition, arns))["StartAt"] == "StartRun"


def test_an_unknown_state_machine_id_is_an_error() -> None:
    with pytest.raises(TemplateError, match="no state machine 'Nope'"):
        load_stack(TEMPLATE_PATH, state_machine_id="Nope")


def test_unresolved_placeholder_is_an_error() -> None:
    with pytest.raises(TemplateError, match="Missing"):
        substitute('{"a": "${Missing}"}', {"Other": "x"})


# A fresh process: in the test session another test may have imported moto.batch already.
OPEN_THE_REAL_DEPLOYMENT = """
import sys
from moto import mock_aws
from totes_ingest.local.runner import LocalDeployment
with mock_aws():
    with LocalDeployment():
        opened = sorted(m for m in ("moto.batch", "moto.ec2", "moto.ecs") if m in sys.modules)
import moto.batch
print(opened, hasattr(moto.batch, "batch_backends"))
"""


def test_the_real_deployment_opens_without_motos_batch_ec2_and_ecs_backends(
    aws_env: None,
) -> None:
    # GIVEN the real ASL, which has no Batch task
    # WHEN a deployment is opened in a new process
    opened = subprocess.run(
        [sys.executable, "-c", OPEN_THE_REAL_DEPLOYMENT],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    # THEN moto's Batch, EC2 and ECS backends were never imported, and moto.batch is
    # still importable, whole, afterwards
    assert opened.stdout == "[] True\n", opened.stderr


def test_a_task_on_a_function_outside_the_stack_fails_with_lambdas_catchable_error(
    aws_env: None, tmp_path: Path
) -> None:
    """AWS fails the task with ``Lambda.ResourceNotFoundException`` (Catch can name it).
    moto's interpreter builds that error from the ClientError's ``ResponseMetadata``
    (HTTPStatusCode, RequestId), which every ClientError botocore raises carries."""
    template = TEMPLATE.replace("{handlers}", HANDLERS).replace(
        "        Label: !Ref Label\n",
        "        Label: !Ref Label\n"
        "        Missing: arn:aws:lambda:eu-west-2:123456789012:function:Nope\n",
    )
    asl = {
        "StartAt": "Call",
        "States": {
            "Call": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": "${Missing}", "Payload.$": "$"},
                "Catch": [
                    {
                        "ErrorEquals": ["Lambda.ResourceNotFoundException"],
                        "ResultPath": "$.error",
                        "Next": "NotFound",
                    }
                ],
                "End": True,
            },
            "NotFound": {
                "Type": "Pass",
                "Parameters": {"caught.$": "$.error.Error"},
                "End": True,
            },
        },
    }
    (tmp_path / "template.yaml").write_text(template)
    (tmp_path / "machine.asl.json").write_text(json.dumps(asl))
    stack = load_stack(tmp_path / "template.yaml")

    with mock_aws():
        result = run_state_machine({"items": []}, timeout_s=15, stack=stack)

    assert result.succeeded, result.describe()
    assert result.output == {"caught": "Lambda.ResourceNotFoundException"}


def test_in_process_lambdas_client_errors_carry_response_metadata(stack: Stack) -> None:
    lambda_ = InProcessLambda({spec.logical_id: spec for spec in stack.functions.values()}, None)
    arn = "arn:aws:lambda:eu-west-2:123456789012:function:"

    with pytest.raises(ClientError) as raised:
        lambda_.invoke(FunctionName=f"{arn}Nope", Payload=b"{}")
    metadata = raised.value.response.get("ResponseMetadata", {})
    assert metadata.get("HTTPStatusCode") == 404
    assert "RequestId" in metadata
