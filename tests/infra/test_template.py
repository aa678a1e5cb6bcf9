"""template.yaml lints clean, transforms, and is wired to the ASL and the handlers."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from cfnlint.api import ManualArgs, lint_file

from totes_ingest import config

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
INGEST_FUNCTIONS = [
    "StartRunFunction",
    "GetLastIngestTimeFunction",
    "QueryToParquetFunction",
    "CommitTableFunction",
    "AggregateFunction",
]
FUNCTION_NAMES = [*INGEST_FUNCTIONS, "AuditTableFunction", "AuditSummaryFunction"]


def states_of(definition: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every state, including those inside Map and Parallel states."""
    for name, state in definition["States"].items():
        yield name, state
        inner = state.get("ItemProcessor") or state.get("Iterator")
        if inner:
            yield from states_of(inner)
        for branch in state.get("Branches", []):
            yield from states_of(branch)


def serverless(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        n: r for n, r in template["Resources"].items() if r["Type"] == f"AWS::Serverless::{kind}"
    }


def state_machine(template: dict[str, Any], name: str = "IngestStateMachine") -> dict[str, Any]:
    properties: dict[str, Any] = serverless(template, "StateMachine")[name]["Properties"]
    return properties


def test_cfn_lint_reports_no_error_warning_or_information() -> None:
    config = ManualArgs(regions=["eu-west-2"], include_checks=["I"])

    matches = lint_file(ROOT / "template.yaml", config=config)

    assert [str(m) for m in matches] == []


def test_the_sam_transform_makes_a_lambda_function_of_every_function(
    transformed: dict[str, Any],
) -> None:
    kinds = {name: transformed["Resources"][name]["Type"] for name in FUNCTION_NAMES}

    assert set(kinds.values()) == {"AWS::Lambda::Function"}


def test_the_sam_transform_makes_a_step_functions_state_machine(
    transformed: dict[str, Any],
) -> None:
    assert transformed["Resources"]["IngestStateMachine"]["Type"] == (
        "AWS::StepFunctions::StateMachine"
    )


def test_the_state_machine_deploys_the_asl_file_itself(template: dict[str, Any]) -> None:
    assert state_machine(template)["DefinitionUri"] == "statemachine/ingest.asl.json"


def test_every_definition_substitution_is_used_by_the_asl(
    template: dict[str, Any], asl_text: str
) -> None:
    substitutions = set(state_machine(template)["DefinitionSubstitutions"])

    assert substitutions - set(PLACEHOLDER.findall(asl_text)) == set()


def test_every_asl_placeholder_has_a_definition_substitution(
    template: dict[str, Any], asl_text: str
) -> None:
    substitutions = set(state_machine(template)["DefinitionSubstitutions"])

    assert set(PLACEHOLDER.findall(asl_text)) - substitutions == set()


def test_every_lambda_the_asl_invokes_is_a_function_of_the_template(
    template: dict[str, Any], asl: dict[str, Any]
) -> None:
    substitutions = state_machine(template)["DefinitionSubstitutions"]
    functions = set(serverless(template, "Function"))
    invoked = {
        name: state["Parameters"]["FunctionName"]
        for name, state in states_of(asl)
        if state.get("Resource") == "arn:aws:states:::lambda:invoke"
    }

    targets = {
        name: substitutions[PLACEHOLDER.fullmatch(arn).group(1)]  # type: ignore[union-attr]
        for name, arn in invoked.items()
    }

    assert {"StageWindow", "CommitWindows"} <= set(invoked)  # a function's second state each
    assert all(t["Fn::GetAtt"][1] == "Arn" for t in targets.values())
    assert {t["Fn::GetAtt"][0] for t in targets.values()} == set(INGEST_FUNCTIONS) <= functions


def test_every_task_state_invokes_lambda_through_the_service_integration(
    asl: dict[str, Any],
) -> None:
    resources = {state["Resource"] for _, state in states_of(asl) if state["Type"] == "Task"}

    assert resources == {"arn:aws:states:::lambda:invoke"}


@pytest.mark.parametrize("function", FUNCTION_NAMES)
def test_every_handler_resolves_to_a_callable(template: dict[str, Any], function: str) -> None:
    module_name, _, attribute = template["Resources"][function]["Properties"]["Handler"].rpartition(
        "."
    )

    handler = getattr(importlib.import_module(module_name), attribute)

    assert callable(handler)


def test_functions_run_python_3_12_or_newer_on_arm64(template: dict[str, Any]) -> None:
    function_globals = template["Globals"]["Function"]
    version = tuple(int(p) for p in function_globals["Runtime"].removeprefix("python").split("."))

    assert version >= (3, 12)
    assert function_globals["Architectures"] == ["arm64"]


def test_functions_are_built_from_the_functions_folder(template: dict[str, Any]) -> None:
    assert template["Globals"]["Function"]["CodeUri"] == "functions/"
    assert (ROOT / "functions" / "requirements.txt").is_file()


def test_every_environment_variable_of_the_contract_is_set(template: dict[str, Any]) -> None:
    contract = (ROOT / "docs" / "CONTRACTS.md").read_text()
    paragraph = contract.split("Environment of every function:")[1].split("\n\n")[0]
    names = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", paragraph))

    variables = template["Globals"]["Function"]["Environment"]["Variables"]

    assert names
    assert names - set(variables) == set()


def test_no_function_captures_responses_in_traces(template: dict[str, Any]) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]

    assert template["Globals"]["Function"]["Tracing"] == "Active"
    assert variables["POWERTOOLS_TRACER_CAPTURE_RESPONSE"] == "false"


def test_the_metrics_namespace_comes_from_its_parameter(template: dict[str, Any]) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]

    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == {"Ref": "MetricsNamespace"}


def test_the_state_machine_logs_no_execution_data(template: dict[str, Any]) -> None:
    logging = state_machine(template)["Logging"]

    assert logging["IncludeExecutionData"] is False
    assert logging["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"]


def test_the_state_machine_is_traced(template: dict[str, Any]) -> None:
    assert state_machine(template)["Tracing"] == {"Enabled": True}


def test_the_schedule_starts_a_run_of_the_tables_parameter(template: dict[str, Any]) -> None:
    schedule = state_machine(template)["Events"]["Schedule"]
    pattern, variables = schedule["Properties"]["Input"]["Fn::Sub"]
    separator, _ = variables["Tables"]["Fn::Join"]
    tables = template["Parameters"]["TablesToQuery"]["Default"].split(",")

    execution_input = json.loads(pattern.replace("${Tables}", separator.join(tables)))

    assert schedule["Type"] == "ScheduleV2"
    assert execution_input == {"tables_to_query": tables}


def test_the_schedule_follows_its_rate_and_switch_parameters(template: dict[str, Any]) -> None:
    properties = state_machine(template)["Events"]["Schedule"]["Properties"]

    assert properties["ScheduleExpression"] == {"Ref": "ScheduleExpression"}
    assert properties["State"] == {"Fn::If": ["ScheduleOn", "ENABLED", "DISABLED"]}


def test_the_default_tables_are_the_sample_events_tables(template: dict[str, Any]) -> None:
    sample = json.loads((ROOT / "events" / "state_machine_input.json").read_text())

    assert (
        template["Parameters"]["TablesToQuery"]["Default"].split(",") == (sample["tables_to_query"])
    )


def test_max_concurrency_reaches_the_map_through_start_run(
    template: dict[str, Any], asl: dict[str, Any]
) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]

    assert variables["MAX_CONCURRENCY"] == {"Ref": "MaxConcurrency"}
    assert asl["States"]["IngestTables"]["MaxConcurrencyPath"] == "$.max_concurrency"


def test_the_database_statement_times_out_before_its_function(template: dict[str, Any]) -> None:
    statement_timeout_ms = template["Parameters"]["StatementTimeoutMs"]["MaxValue"]
    function_timeout_s = template["Resources"]["QueryToParquetFunction"]["Properties"]["Timeout"]

    assert statement_timeout_ms < function_timeout_s * 1000


def test_an_alarm_watches_failed_timed_out_and_aborted_executions(
    template: dict[str, Any],
) -> None:
    alarm = template["Resources"]["ExecutionsFailedAlarm"]["Properties"]
    watched = {
        m["MetricStat"]["Metric"]["MetricName"] for m in alarm["Metrics"] if "MetricStat" in m
    }

    assert watched == {"ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted"}
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def test_the_dashboard_shows_every_pipeline_metric(template: dict[str, Any]) -> None:
    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0]

    for metric in [
        "RowsIngested",
        "BytesWritten",
        "StepDuration",
        "FreshnessSeconds",
        "ExecutionsSucceeded",
        "ExecutionsFailed",
        "ExecutionsTimedOut",
        "ExecutionsAborted",
    ]:
        assert metric in body


def test_the_dashboard_body_is_json_once_substituted(template: dict[str, Any]) -> None:
    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0]
    substituted = re.sub(r"\$\{!", "${", re.sub(r"\$\{[\w:.]+\}", "x", body))

    assert json.loads(substituted)["widgets"]


def alarm_metrics(template: dict[str, Any], alarm: str) -> dict[str, set[str]]:
    """``{metric name: {dimension values}}`` of an alarm's metric-math inputs."""
    watched: dict[str, set[str]] = {}
    for metric in template["Resources"][alarm]["Properties"]["Metrics"]:
        if "MetricStat" in metric:
            stat = metric["MetricStat"]["Metric"]
            values = {json.dumps(d["Value"]) for d in stat["Dimensions"]}
            watched.setdefault(stat["MetricName"], set()).update(values)
    return watched


@pytest.mark.parametrize(
    ("alarm", "metric"),
    [("FunctionErrorsAlarm", "Errors"), ("FunctionThrottlesAlarm", "Throttles")],
)
def test_an_alarm_watches_each_functions_errors_and_throttles(
    template: dict[str, Any], alarm: str, metric: str
) -> None:
    functions = {json.dumps({"Ref": f}) for f in FUNCTION_NAMES}

    assert alarm_metrics(template, alarm) == {metric: functions}


def test_an_alarm_watches_the_runs_the_schedule_could_not_start(template: dict[str, Any]) -> None:
    group = json.dumps({"Ref": "ScheduleGroup"})
    queue = json.dumps({"Fn::GetAtt": ["ScheduleDeadLetterQueue", "QueueName"]})

    assert alarm_metrics(template, "ScheduleFailedAlarm") == {
        "InvocationsSentToDeadLetterCount": {group},
        "InvocationDroppedCount": {group},
        "InvocationsFailedToBeSentToDeadLetterCount": {group},
        "ApproximateNumberOfMessagesVisible": {queue},
    }


def test_the_schedule_runs_in_its_own_group_with_an_encrypted_dead_letter_queue(
    template: dict[str, Any],
) -> None:
    schedule = state_machine(template)["Events"]["Schedule"]["Properties"]
    queue = template["Resources"]["ScheduleDeadLetterQueue"]["Properties"]

    assert schedule["GroupName"] == {"Ref": "ScheduleGroup"}
    assert schedule["DeadLetterConfig"] == {
        "Arn": {"Fn::GetAtt": ["ScheduleDeadLetterQueue", "Arn"]}
    }
    assert queue["KmsMasterKeyId"] == {"Ref": "IngestKey"}


def test_every_alarm_notifies_the_alarm_topic(template: dict[str, Any]) -> None:
    alarms = {
        n: r["Properties"]
        for n, r in template["Resources"].items()
        if r["Type"] == "AWS::CloudWatch::Alarm"
    }

    assert {"FunctionErrorsAlarm", "FunctionThrottlesAlarm", "ScheduleFailedAlarm"} <= set(alarms)
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
        assert "docs/deploy.md" in alarm["AlarmDescription"]


def test_the_ca_bundle_parameter_reaches_the_functions(template: dict[str, Any]) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]

    assert variables[config.DB_SSL_ROOT_CERT] == {"Ref": "DbSslRootCert"}
    assert template["Parameters"]["DbSslRootCert"]["Default"] == ""
    assert re.fullmatch(
        template["Parameters"]["DbSslRootCert"]["AllowedPattern"], "certs/rds-global-bundle.pem"
    )


def test_sam_validate_lint_finds_nothing(sam_cli: Path) -> None:
    run = subprocess.run(
        [str(sam_cli), "validate", "--lint", "--template", str(ROOT / "template.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
        check=False,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "is a valid SAM Template" in run.stdout + run.stderr


def test_every_function_is_built_by_its_makefile_target(template: dict[str, Any]) -> None:
    for name in [*FUNCTION_NAMES, "DependenciesLayer"]:
        assert template["Resources"][name]["Metadata"]["BuildMethod"] == "makefile"
        dry_run = subprocess.run(
            ["make", "-n", f"build-{name}", "ARTIFACTS_DIR=/nowhere"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        assert dry_run.returncode == 0, dry_run.stderr


def test_pyarrow_allocates_from_the_system_allocator(template: dict[str, Any]) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    pool = variables["ARROW_DEFAULT_MEMORY_POOL"]

    # pyarrow falls back to its default pool, with a warning, on a name it does not know
    assert pool == "system"
    assert pool in pa.supported_memory_backends()
