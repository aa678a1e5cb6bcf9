"""Execute the real state machine locally: moto's Step Functions interpreter, our handlers.

The definition executed is ``statemachine/ingest.asl.json``, wired as ``template.yaml``
wires it (DefinitionSubstitutions to function ARNs). moto interprets the ASL
(``mock_aws(config={"stepfunctions": {"execute_state_machine": True}})``) and calls
``lambda.invoke`` for each ``arn:aws:states:::lambda:invoke`` task; this module answers
those invocations in-process (:class:`InProcessLambda`) by importing the template's
``Handler`` and calling it: no function is created in moto's Lambda, nor an IAM role for
one. A handler's exception comes back as Lambda reports it (FunctionError ``Unhandled``,
payload with ``errorType``), so the ASL's Retry and Catch see the exception's class name.

:class:`LocalDeployment` is that set-up, done once, for any number of executions (the
chaos tests run several at once); :func:`run_state_machine` is one deployment, one
execution. No Docker and no AWS: either is refused outside ``mock_aws()``.
"""

from __future__ import annotations

import decimal
import importlib
import io
import json
import logging
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Final, Literal
from unittest import mock

import boto3
import yaml
from botocore.exceptions import ClientError

REPO_ROOT: Final = Path(__file__).resolve().parents[3]
TEMPLATE_PATH: Final = REPO_ROOT / "template.yaml"

# The state machine a template with several is run by default (the audit's is chosen by
# name: ``load_stack(state_machine_id="AuditStateMachine")``).
DEFAULT_STATE_MACHINE: Final = "IngestStateMachine"
_STATES_ROLE: Final = "totes-ingest-local-states"
_POLL_INTERVAL_S: Final = 0.05

ExecutionStatus = Literal["SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"]
# When an execution's event history is fetched: moto builds it event by event, and for a
# whole run (eleven tables, a Map) that costs more than a second of CPU.
HistoryPolicy = Literal["always", "on_failure"]


class TemplateError(ValueError):
    """template.yaml (or the ASL it points at) cannot be turned into a local stack."""


# --- the SAM template -------------------------------------------------------------------


# libyaml's loader when PyYAML was built with it (faster; the same documents), else PyYAML's own.
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _CfnLoader(_SafeLoader):  # type: ignore[misc]
    """A YAML loader that reads CloudFormation short tags (``!Ref``, ``!GetAtt``...)."""


def _construct_tag(loader: _CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    """``!Ref X`` -> ``{"Ref": "X"}``; ``!GetAtt X.Arn`` -> ``{"Fn::GetAtt": "X.Arn"}``."""
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path) -> dict[str, Any]:
    """Parse a SAM/CloudFormation template, keeping intrinsic functions as long-form dicts."""
    try:
        document = yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506  # nosec B506
    except (OSError, yaml.YAMLError) as e:
        raise TemplateError(f"cannot read template {path}: {e}") from e
    if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
        raise TemplateError(f"template {path} has no Resources")
    return document


@dataclass(frozen=True)
class FunctionSpec:
    """One ``AWS::Serverless::Function``: where its handler is and its Lambda settings."""

    logical_id: str
    handler: str
    timeout_s: int = 3
    memory_mb: int = 128
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stack:
    """What a local execution needs from a template: functions and a state machine."""

    functions: dict[str, FunctionSpec]
    definition: str
    # DefinitionSubstitutions: placeholder -> logical ID of a function (its ARN is
    # substituted) or a literal string.
    substitutions: dict[str, FunctionRef | str]
    state_machine_id: str = "StateMachine"


@dataclass(frozen=True)
class FunctionRef:
    """A substitution that resolves to a function's ARN (``Arn``) or name (``Ref``)."""

    logical_id: str
    attribute: Literal["Arn", "Ref"]


def _parameter_defaults(template: Mapping[str, Any]) -> dict[str, str]:
    parameters = template.get("Parameters") or {}
    return {
        name: str(spec["Default"])
        for name, spec in parameters.items()
        if isinstance(spec, dict) and "Default" in spec
    }


def _literal(value: Any, parameters: Mapping[str, str]) -> str | None:
    """A template value as a string, if it is a literal or a Ref to a defaulted parameter."""
    if isinstance(value, str | int | float | bool):
        return str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return parameters.get(str(value["Ref"]))
    return None


def _function_ref(value: Any, functions: Mapping[str, FunctionSpec]) -> FunctionRef | None:
    if not isinstance(value, dict) or len(value) != 1:
        return None
    if "Ref" in value and value["Ref"] in functions:
        return FunctionRef(str(value["Ref"]), "Ref")
    target = value.get("Fn::GetAtt")
    if isinstance(target, str):
        target = target.split(".", 1)
    if isinstance(target, list) and len(target) == 2 and target[0] in functions:
        if target[1] != "Arn":
            raise TemplateError(f"unsupported attribute {target[0]}.{target[1]}")
        return FunctionRef(str(target[0]), "Arn")
    return None


def _environment(settings: Mapping[str, Any], parameters: Mapping[str, str]) -> dict[str, str]:
    """The resolvable variables of an ``Environment`` block (others need local values)."""
    variables = (settings.get("Environment") or {}).get("Variables") or {}
    resolved = {name: _literal(value, parameters) for name, value in variables.items()}
    return {name: value for name, value in resolved.items() if value is not None}


def load_stack(template_path: Path = TEMPLATE_PATH, state_machine_id: str | None = None) -> Stack:
    """Read the functions and the state machine of a SAM template.

    The definition is read from the state machine's ``DefinitionUri`` (relative to the
    template), exactly the file that ``sam deploy`` uploads. ``state_machine_id`` names the
    state machine; None: the template's only one, or ``DEFAULT_STATE_MACHINE``.
    """
    template = load_template(template_path)
    parameters = _parameter_defaults(template)
    globals_ = (template.get("Globals") or {}).get("Function") or {}
    functions: dict[str, FunctionSpec] = {}
    machines: dict[str, dict[str, Any]] = {}
    for logical_id, resource in template["Resources"].items():
        kind = resource.get("Type")
        properties = resource.get("Properties") or {}
        if kind == "AWS::Serverless::Function":
            settings = {**globals_, **properties}
            if not isinstance(settings.get("Handler"), str):
                raise TemplateError(f"{logical_id} has no Handler")
            functions[logical_id] = FunctionSpec(
                logical_id=logical_id,
                handler=settings["Handler"],
                timeout_s=int(_literal(settings.get("Timeout", 3), parameters) or 3),
                memory_mb=int(_literal(settings.get("MemorySize", 128), parameters) or 128),
                environment={
                    **_environment(globals_, parameters),
                    **_environment(properties, parameters),
                },
            )
        elif kind == "AWS::Serverless::StateMachine":
            machines[logical_id] = properties
    if state_machine_id is None:
        if len(machines) == 1:
            state_machine_id = next(iter(machines))
        elif DEFAULT_STATE_MACHINE in machines:
            state_machine_id = DEFAULT_STATE_MACHINE
        else:
            raise TemplateError(f"expected one state machine, found {sorted(machines)}")
    if state_machine_id not in machines:
        raise TemplateError(f"no state machine {state_machine_id!r} in {template_path}")
    machine = machines[state_machine_id]
    uri = machine.get("DefinitionUri")
    if not isinstance(uri, str):
        raise TemplateError(f"{state_machine_id} needs a local DefinitionUri")
    definition_path = template_path.parent / uri
    try:
        definition = definition_path.read_text()
    except OSError as e:
        raise TemplateError(f"cannot read {definition_path}: {e}") from e
    substitutions: dict[str, FunctionRef | str] = {}
    for key, value in (machine.get("DefinitionSubstitutions") or {}).items():
        resolved = _function_ref(value, functions) or _literal(value, parameters)
        if resolved is None:
            raise TemplateError(f"cannot resolve DefinitionSubstitutions {key}: {value!r}")
        substitutions[key] = resolved
    return Stack(functions, definition, substitutions, state_machine_id)


def substitute(definition: str, values: Mapping[str, str]) -> str:
    """Replace each ``${Key}`` of the definition; a placeholder left over is an error."""
    for key, value in values.items():
        definition = definition.replace("${" + key + "}", value)
    if "${" in definition:
        start = definition.index("${")
        raise TemplateError(f"unresolved placeholder {definition[start : start + 60]!r}")
    return definition


# --- the Lambda side --------------------------------------------------------------------


@dataclass
class LambdaContext:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    aws_request_id: str
    deadline_s: float
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline_s - time.monotonic()) * 1000))


@dataclass(frozen=True)
class TaskReport:
    """One Lambda invocation made by the execution, for progress output."""

    function: str
    payload: Any
    result: Any | None
    error: dict[str, Any] | None
    duration_s: float


def _json_default(value: Any) -> Any:
    # Lambda's Python runtime serialises Decimal as a number and refuses anything else.
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _error_payload(error: BaseException) -> dict[str, Any]:
    """The payload Lambda returns for an unhandled exception."""
    return {
        "errorMessage": str(error),
        "errorType": type(error).__name__,
        "requestId": "",
        "stackTrace": traceback.format_list(traceback.extract_tb(error.__traceback__)),
    }


def invoke_handler(spec: FunctionSpec, arn: str, event: Any) -> tuple[Any, dict[str, Any] | None]:
    """Call ``spec``'s handler as Lambda would: (result, None) or (None, error payload)."""
    started = time.monotonic()
    context = LambdaContext(
        function_name=spec.logical_id,
        invoked_function_arn=arn,
        memory_limit_in_mb=spec.memory_mb,
        aws_request_id=str(uuid.uuid4()),
        deadline_s=started + spec.timeout_s,
        log_group_name=f"/aws/lambda/{spec.logical_id}",
    )
    try:
        module_name, _, function_name = spec.handler.rpartition(".")
        handler = getattr(importlib.import_module(module_name), function_name)
        result = handler(event, context)
    except Exception as e:
        return None, _error_payload(e)
    if time.monotonic() - started > spec.timeout_s:
        # Lambda would have stopped the function: say so rather than pretend it succeeded.
        return None, {
            "errorMessage": f"Task timed out after {spec.timeout_s:.2f} seconds",
            "errorType": "Sandbox.Timedout",
        }
    return result, None


class InProcessLambda:
    """The Lambda service as moto's interpreter calls it: ``invoke`` runs the handler of
    one of the stack's functions in this process and answers as Lambda's Invoke does.

    A handler's exception comes back as Lambda reports it (``FunctionError: Unhandled``,
    payload with ``errorType``), a result JSON cannot encode as ``Runtime.MarshalError``;
    an unknown function is Lambda's ``ResourceNotFoundException``. No function exists in
    moto (nor the IAM role Lambda would need): nothing but the interpreter invokes them.
    """

    def __init__(
        self, specs: Mapping[str, FunctionSpec], on_task: Callable[[TaskReport], None] | None
    ) -> None:
        self.specs = specs
        self.on_task = on_task

    def invoke(self, **parameters: Any) -> dict[str, Any]:
        name = str(parameters.get("FunctionName", ""))
        parts = name.split(":")  # arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]
        spec = self.specs.get(parts[6] if len(parts) >= 7 and parts[5] == "function" else name)
        if spec is None:
            raise _lambda_error(404, "ResourceNotFoundException", f"{name} not found")
        if parameters.get("InvocationType", "RequestResponse") != "RequestResponse":
            raise _lambda_error(400, "InvalidParameterValueException", "synchronous only")
        body = parameters.get("Payload")
        event = json.loads(body) if body else {}
        started = time.monotonic()
        result, error = invoke_handler(spec, name, event)
        if error is None:
            try:
                payload = json.dumps(result, default=_json_default)
            except (TypeError, ValueError) as e:
                result, error = (
                    None,
                    {
                        "errorMessage": f"Unable to marshal response: {e}",
                        "errorType": "Runtime.MarshalError",
                    },
                )
        if error is not None:
            payload = json.dumps(error)
        if self.on_task is not None:
            report = TaskReport(spec.logical_id, event, result, error, time.monotonic() - started)
            self.on_task(report)
        response: dict[str, Any] = {
            "StatusCode": 200,
            "ExecutedVersion": "$LATEST",
            "Payload": io.BytesIO(payload.encode("utf-8")),
        }
        if error is not None:
            response["FunctionError"] = "Unhandled"
        return response


def _lambda_error(status: int, code: str, message: str) -> ClientError:
    """Lambda's error response, with the metadata the interpreter reads to name it."""
    metadata = {"HTTPStatusCode": status, "RequestId": str(uuid.uuid4()), "HTTPHeaders": {}}
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": metadata},
        "Invoke",
    )


@contextmanager
def _lambda_in_process(lambda_: InProcessLambda) -> Iterator[None]:
    """While open, moto's interpreter invokes ``lambda_`` for every Lambda task.

    The interpreter asks ``boto_client_for`` for a Lambda client at every task (5-10 ms
    of CPU each, two dozen in a run of eleven tables); it gets the one in-process Lambda.
    """
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
    from moto.stepfunctions.parser.asl.utils.boto_client import boto_client_for as original

    def client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        if service == "lambda":
            return lambda_
        return original(region=region, service=service, state_credentials=state_credentials)

    with mock.patch.object(lambda_eval_utils, "boto_client_for", client_for):
        yield


# --- the execution ----------------------------------------------------------------------


@dataclass(frozen=True)
class ExecutionResult:
    """How an execution ended. ``output`` is the parsed output JSON (when it succeeded)."""

    status: ExecutionStatus
    output: Any
    error: str | None
    cause: str | None
    history: list[dict[str, Any]]
    execution_arn: str = ""
    duration_s: float = 0.0

    @classmethod
    def of(
        cls,
        described: Mapping[str, Any] | None,
        history: list[dict[str, Any]],
        execution_arn: str,
        duration_s: float,
        timeout_s: float,
    ) -> ExecutionResult:
        """From ``describe_execution`` (None: still running after ``timeout_s``)."""
        if described is None:
            cause = f"no result within {timeout_s:g} s"
            return cls("TIMED_OUT", None, "LocalTimeout", cause, history, execution_arn, duration_s)
        output = described.get("output")
        return cls(
            status=described["status"],
            output=json.loads(output) if output is not None else None,
            error=described.get("error"),
            cause=described.get("cause"),
            history=history,
            execution_arn=execution_arn,
            duration_s=duration_s,
        )

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"

    def describe(self) -> str:
        """Status, error, cause and the event history, for failure messages."""
        lines = [f"execution {self.status} in {self.duration_s:.1f}s"]
        if self.error or self.cause:
            lines.append(f"error: {self.error}\ncause: {self.cause}")
        lines.append("history:")
        lines.extend(f"  {format_event(event)}" for event in self.history)
        return "\n".join(lines)


def format_event(event: Mapping[str, Any]) -> str:
    """One history event on one line: id, type, state name and any error."""
    parts = [f"{event.get('id', '?'):>4}", str(event.get("type", "?"))]
    for key, details in event.items():
        if not key.endswith("EventDetails") or not isinstance(details, dict):
            continue
        for name in ("name", "resource", "error", "cause"):
            if details.get(name):
                parts.append(f"{name}={str(details[name])[:300]}")
    return " ".join(parts)


def _account() -> str:
    """The mocked account's ID (moto's default unless ``MOTO_ACCOUNT_ID`` is set)."""
    from moto.core.models import DEFAULT_ACCOUNT_ID

    return os.environ.get("MOTO_ACCOUNT_ID", DEFAULT_ACCOUNT_ID)


def _aws_is_mocked() -> bool:
    from moto.core.models import botocore_stubber

    return bool(botocore_stubber.enabled)


@contextmanager
def environment_applied(
    environment: Mapping[str, str], *, unset: Iterable[str] = ()
) -> Iterator[None]:
    """Set (and unset) variables for a while (the handlers run in this process), then restore."""
    unset = tuple(unset)
    saved = {name: os.environ.get(name) for name in (*environment, *unset)}
    for name in unset:
        os.environ.pop(name, None)
    os.environ.update(environment)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def serialized_s3() -> Iterator[None]:
    """Make each of moto's S3 requests one atomic step, as each S3 request is on S3.

    moto's S3 is not safe under concurrent requests: a conditional put checks, then
    writes (two racing claims could both win), and a listing racing a delete fails with
    a ``KeyError``. The Map runs tables side by side, so every execution needs this.
    """
    from moto.s3.responses import S3Response

    lock = threading.RLock()

    def atomic(handler: Callable[..., Any]) -> Callable[..., Any]:
        def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
            with lock:
                return handler(self, *args, **kwargs)

        return locked

    with (
        mock.patch.object(S3Response, "_bucket_response", atomic(S3Response._bucket_response)),
        mock.patch.object(S3Response, "_key_response", atomic(S3Response._key_response)),
    ):
        yield


@contextmanager
def _quiet_interpreter() -> Iterator[None]:
    """Mute moto's interpreter, which logs every failed state (caught or not) with a
    multi-kilobyte repr; the history returned carries the same errors, readably."""
    interpreter = logging.getLogger("moto.stepfunctions.parser")
    level = interpreter.level
    interpreter.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        interpreter.setLevel(level)


def _history(sfn: Any, execution_arn: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"executionArn": execution_arn}
    while True:
        page = sfn.get_execution_history(**kwargs)
        events.extend(page["events"])
        if not page.get("nextToken"):
            return events
        kwargs["nextToken"] = page["nextToken"]


_BATCH_RESOURCE: Final = "arn:aws:states:::batch:"


def _import_interpreter(definition: str) -> None:
    """Import moto's Step Functions interpreter without moto's Batch backend, when the
    definition has no Batch task.

    The interpreter's Batch integration imports ``moto.batch.utils`` for one enum, and
    ``moto.batch``'s ``__init__`` imports its backend, which imports all of moto's EC2
    and ECS: about 1.7 s of CPU at every local run, for a service our ASL never calls.
    While the interpreter is imported, ``moto.batch`` is a bare package (its own folder,
    its ``__init__`` not run), so ``moto.batch.utils`` is the real module; then the bare
    package is dropped, and anything importing ``moto.batch`` later gets the real one.
    """
    import moto

    if "moto.stepfunctions.parser.models" in sys.modules or _BATCH_RESOURCE in definition:
        return
    if "moto.batch" in sys.modules:
        importlib.import_module("moto.stepfunctions.parser.models")
        return
    bare = ModuleType("moto.batch")
    bare.__path__ = [str(Path(moto.__file__).parent / "batch")]
    bare.__package__ = "moto.batch"
    sys.modules["moto.batch"] = bare
    try:
        importlib.import_module("moto.stepfunctions.parser.models")
    finally:
        if sys.modules.get("moto.batch") is bare:
            del sys.modules["moto.batch"]
        if getattr(moto, "batch", None) is bare:
            delattr(moto, "batch")


class LocalDeployment:
    """The template's state machine and functions, deployed once inside ``mock_aws()``.

    Opening it nests a mock in the caller's (same mocked account, Step Functions
    interpreter switched on), creates the state machine (its Lambda ARNs named after the
    template's functions, none created in moto), and routes the functions' invocations
    to their handlers in this process (:class:`InProcessLambda`) until it is closed. Any
    number of executions can then run, side by side: moto runs each execution, and each
    Map iteration, in its own thread.

    Handlers read ``os.environ``, set while the deployment is open from, in increasing
    priority: the template's resolvable variables (parameter defaults), the current
    environment, ``environment``. Per-function variables cannot differ, since concurrent
    handlers share one process. ``on_task`` sees every Lambda invocation, from moto's
    threads. Opening it outside ``mock_aws()`` is refused: it never reaches AWS.
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

    def _handler_environment(self) -> dict[str, str]:
        template_env: dict[str, str] = {}
        for spec in self.stack.functions.values():
            template_env.update(spec.environment)
        effective = {**template_env, **os.environ, **self.environment}
        return {name: effective[name] for name in {*template_env, *self.environment}}

    def __enter__(self) -> LocalDeployment:
        if not _aws_is_mocked():
            raise RuntimeError("a local deployment must be opened inside moto's mock_aws()")
        from moto import mock_aws

        _import_interpreter(self.stack.definition)
        with ExitStack() as opening:
            # Nested inside the caller's mock: same mocked account, interpreter switched on.
            opening.enter_context(
                mock_aws(config={"stepfunctions": {"execute_state_machine": True}})
            )
            opening.enter_context(environment_applied(self._handler_environment()))
            opening.enter_context(_quiet_interpreter())
            opening.enter_context(serialized_s3())
            self._sfn = boto3.client("stepfunctions")
            region = self._sfn.meta.region_name
            arns = {
                spec.logical_id: f"arn:aws:lambda:{region}:{_account()}:function:{spec.logical_id}"
                for spec in self.stack.functions.values()
            }
            values = {
                key: (arns[value.logical_id] if value.attribute == "Arn" else value.logical_id)
                if isinstance(value, FunctionRef)
                else value
                for key, value in self.stack.substitutions.items()
            }
            self._machine_arn = self._sfn.create_state_machine(
                name=f"{self.stack.state_machine_id}-{uuid.uuid4().hex[:8]}",
                definition=substitute(self.stack.definition, values),
                roleArn=f"arn:aws:iam::{_account()}:role/{_STATES_ROLE}",
            )["stateMachineArn"]
            specs = {spec.logical_id: spec for spec in self.stack.functions.values()}
            opening.enter_context(_lambda_in_process(InProcessLambda(specs, self.on_task)))
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
            name=f"local-{uuid.uuid4().hex[:12]}",
            input=json.dumps(event),
        )["executionArn"]
        return arn

    def run_together(
        self,
        events: Sequence[Mapping[str, Any]],
        *,
        delays_s: Sequence[float] | None = None,
        timeout_s: float,
        history: HistoryPolicy = "always",
    ) -> list[ExecutionResult]:
        """Start one execution per event (the i-th ``delays_s[i]`` seconds after the
        first), wait for all of them, and return their results in the same order.

        An execution still running ``timeout_s`` seconds after the first start is stopped
        and reported as ``TIMED_OUT`` with error ``LocalTimeout``. The history is
        returned for every execution, or with ``history="on_failure"`` only for those
        that did not succeed (the others' is empty).
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
        return [self._result(arns[i], *finished[i], timeout_s, history) for i in range(len(events))]

    def run(
        self, event: Mapping[str, Any], *, timeout_s: float, history: HistoryPolicy = "always"
    ) -> ExecutionResult:
        """One execution: :meth:`run_together` with one event."""
        return self.run_together([event], timeout_s=timeout_s, history=history)[0]

    def _result(
        self,
        arn: str,
        described: dict[str, Any] | None,
        duration: float,
        timeout_s: float,
        history: HistoryPolicy,
    ) -> ExecutionResult:
        succeeded = described is not None and described["status"] == "SUCCEEDED"
        events = [] if succeeded and history == "on_failure" else _history(self._sfn, arn)
        return ExecutionResult.of(described, events, arn, duration, timeout_s)


def run_state_machine(
    event: Mapping[str, Any],
    *,
    timeout_s: float,
    stack: Stack | None = None,
    environment: Mapping[str, str] | None = None,
    on_task: Callable[[TaskReport], None] | None = None,
    history: HistoryPolicy = "always",
) -> ExecutionResult:
    """Execute ``stack``'s state machine (default: template.yaml's) with ``event`` as input.

    Must be called inside ``mock_aws()``: the caller owns the mocked account (bucket,
    secret). Deploys a :class:`LocalDeployment` (whose docstring says which environment
    the handlers see), runs one execution and tears the deployment down.

    Waits at most ``timeout_s`` seconds; then the execution is stopped and reported as
    ``TIMED_OUT`` with error ``LocalTimeout``. The history is returned in every case, or
    with ``history="on_failure"`` only when the execution did not succeed.
    """
    with LocalDeployment(stack=stack, environment=environment, on_task=on_task) as deployment:
        return deployment.run(event, timeout_s=timeout_s, history=history)
