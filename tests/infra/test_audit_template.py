"""The scheduled audit as deployed: its state machine is statemachine/audit.asl.json,
wired to its functions, scheduled daily by default, and watched by two alarms."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.infra.test_template import PLACEHOLDER, serverless, state_machine, states_of
from totes_ingest import config

pytestmark = pytest.mark.infra

AUDIT_FUNCTIONS = {"StartRunFunction", "AuditTableFunction", "AuditSummaryFunction"}


@pytest.fixture(scope="module")
def machine(template: dict[str, Any]) -> dict[str, Any]:
    return state_machine(template, "AuditStateMachine")


def test_the_audit_state_machine_deploys_the_asl_file_itself(machine: dict[str, Any]) -> None:
    assert machine["DefinitionUri"] == "statemachine/audit.asl.json"


def test_the_audit_substitutions_are_exactly_the_asl_placeholders(
    machine: dict[str, Any], audit_asl_text: str
) -> None:
    assert set(machine["DefinitionSubstitutions"]) == set(PLACEHOLDER.findall(audit_asl_text))


def test_the_audit_invokes_start_run_audit_table_and_audit_summary(
    machine: dict[str, Any], audit_asl: dict[str, Any], template: dict[str, Any]
) -> None:
    substitutions = machine["DefinitionSubstitutions"]
    invoked = {
        substitutions[PLACEHOLDER.fullmatch(state["Parameters"]["FunctionName"]).group(1)][  # type: ignore[union-attr]
            "Fn::GetAtt"
        ][0]
        for _, state in states_of(audit_asl)
        if state["Type"] == "Task"
    }

    assert invoked == AUDIT_FUNCTIONS
    assert invoked <= set(serverless(template, "Function"))


def test_every_audit_task_has_the_ingests_retry_block(
    audit_asl: dict[str, Any], asl: dict[str, Any]
) -> None:
    (retry,) = {json.dumps(s["Retry"]) for _, s in states_of(asl) if s["Type"] == "Task"}

    tasks = [s for _, s in states_of(audit_asl) if s["Type"] == "Task"]

    assert len(tasks) == 3
    assert all(s["Resource"] == "arn:aws:states:::lambda:invoke" for s in tasks)
    assert all(json.dumps(s["Retry"]) == retry for s in tasks)


def test_one_tables_failure_is_caught_inside_the_map_and_fails_the_audit_at_the_end(
    audit_asl: dict[str, Any],
) -> None:
    states = audit_asl["States"]
    inner = states["AuditTables"]["ItemProcessor"]["States"]

    (catch,) = inner["AuditTable"]["Catch"]

    assert catch == {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "TableFailed"}
    assert inner["TableFailed"]["Type"] == "Pass"
    assert inner["TableFailed"]["Parameters"]["status"] == "failed"
    assert states["AuditTables"]["Next"] == "AuditSummary"
    assert states["AuditTables"]["MaxConcurrencyPath"] == "$.max_concurrency"
    (choice,) = states["LakeWhole"]["Choices"]
    assert choice == {"Variable": "$.whole", "BooleanEquals": False, "Next": "AuditFailed"}
    assert states["AuditFailed"] == {
        **states["AuditFailed"],
        "Type": "Fail",
        "ErrorPath": "$.error",
        "CausePath": "$.cause",
    }


def test_the_audit_logs_no_execution_data_and_is_traced(machine: dict[str, Any]) -> None:
    assert machine["Logging"]["IncludeExecutionData"] is False
    assert machine["Logging"]["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"] == {
        "Fn::GetAtt": ["AuditStateMachineLogGroup", "Arn"]
    }
    assert machine["Tracing"] == {"Enabled": True}


def test_the_audit_schedule_is_daily_by_default_and_audits_the_tables_parameter(
    machine: dict[str, Any], template: dict[str, Any]
) -> None:
    schedule = machine["Events"]["AuditSchedule"]
    properties = schedule["Properties"]
    pattern, variables = properties["Input"]["Fn::Sub"]
    separator, _ = variables["Tables"]["Fn::Join"]
    tables = template["Parameters"]["TablesToQuery"]["Default"].split(",")

    assert schedule["Type"] == "ScheduleV2"
    assert json.loads(pattern.replace("${Tables}", separator.join(tables))) == {
        "tables_to_query": tables
    }
    assert properties["ScheduleExpression"] == {"Ref": "AuditScheduleExpression"}
    assert template["Parameters"]["AuditScheduleExpression"]["Default"] == "rate(1 day)"
    assert properties["State"] == {"Fn::If": ["AuditScheduleOn", "ENABLED", "DISABLED"]}
    assert template["Conditions"]["AuditScheduleOn"] == {
        "Fn::Equals": [{"Ref": "AuditScheduleEnabled"}, "true"]
    }
    assert properties["GroupName"] == {"Ref": "ScheduleGroup"}
    assert properties["RoleArn"] == {"Fn::GetAtt": ["AuditScheduleRole", "Arn"]}


def test_the_audit_function_is_configured_from_its_parameters(template: dict[str, Any]) -> None:
    function = template["Resources"]["AuditTableFunction"]["Properties"]
    variables = function["Environment"]["Variables"]

    assert variables[config.AUDIT_HORIZON_DAYS] == {"Ref": "AuditHorizonDays"}
    assert (
        template["Parameters"]["AuditHorizonDays"]["Default"] == config.DEFAULT_AUDIT_HORIZON_DAYS
    )
    assert variables[config.AUDIT_REPAIR] == {"Ref": "AuditRepair"}
    assert template["Parameters"]["AuditRepair"]["Default"] == "true"
    assert function["MemorySize"] == {"Ref": "AuditMemorySize"}
    # the lease outlives any audit holding it
    assert float(variables[config.AUDIT_LEASE_SECONDS]) > function["Timeout"]
    assert function["Timeout"] < config.DEFAULT_AUDIT_LEASE_SECONDS


def test_an_alarm_watches_failed_timed_out_and_aborted_audits(template: dict[str, Any]) -> None:
    alarm = template["Resources"]["AuditExecutionsFailedAlarm"]["Properties"]
    watched = {
        m["MetricStat"]["Metric"]["MetricName"]: m["MetricStat"]["Metric"]["Dimensions"]
        for m in alarm["Metrics"]
        if "MetricStat" in m
    }

    assert set(watched) == {"ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted"}
    assert all(
        d == [{"Name": "StateMachineArn", "Value": {"Ref": "AuditStateMachine"}}]
        for d in watched.values()
    )
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def test_an_alarm_fires_on_any_missing_version_of_any_table(template: dict[str, Any]) -> None:
    alarm = template["Resources"]["AuditMissingVersionsAlarm"]["Properties"]
    (query,) = alarm["Metrics"]

    assert re.fullmatch(
        r'SELECT MAX\(MissingVersions\) FROM "\$\{MetricsNamespace\}"',
        query["Expression"]["Fn::Sub"],
    )
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def test_the_dashboard_shows_the_audits_findings_and_outcomes(template: dict[str, Any]) -> None:
    body, variables = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]

    for metric in ("MissingVersions", "RepairedVersions", "DeletedKeys", "NewerInLakeKeys"):
        assert f'MetricName=\\"{metric}\\"' in body
    assert "${AuditStateMachineArn}" in body
    assert variables["AuditStateMachineArn"] == {"Ref": "AuditStateMachine"}
