"""samconfig.toml deploys a dev and a prod stack with values the template accepts."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENTS = ["default", "prod"]


@pytest.fixture(scope="module")
def samconfig() -> dict[str, Any]:
    return tomllib.loads((ROOT / "samconfig.toml").read_text())


def overrides(samconfig: dict[str, Any], environment: str, command: str) -> dict[str, str]:
    pairs = samconfig[environment][command]["parameters"].get("parameter_overrides", [])
    return dict(pair.split("=", 1) for pair in pairs)


def violations(parameter: dict[str, Any], value: str) -> list[str]:
    """What CloudFormation would reject about ``value`` for ``parameter``."""
    found = []
    if "AllowedValues" in parameter and value not in map(str, parameter["AllowedValues"]):
        found.append(f"{value!r} not in {parameter['AllowedValues']}")
    if "AllowedPattern" in parameter and not re.fullmatch(parameter["AllowedPattern"], value):
        found.append(f"{value!r} does not match {parameter['AllowedPattern']}")
    if parameter["Type"] == "Number":
        number = float(value)
        if not parameter.get("MinValue", number) <= number <= parameter.get("MaxValue", number):
            found.append(
                f"{value} outside [{parameter.get('MinValue')}, {parameter.get('MaxValue')}]"
            )
    return found


def test_the_environments_deploy_different_stacks(samconfig: dict[str, Any]) -> None:
    names = {samconfig[e]["global"]["parameters"]["stack_name"] for e in ENVIRONMENTS}

    assert len(names) == len(ENVIRONMENTS)


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_each_environment_confirms_its_changeset_and_resolves_its_artifact_bucket(
    samconfig: dict[str, Any], environment: str
) -> None:
    deploy = samconfig[environment]["deploy"]["parameters"]

    assert deploy["capabilities"] == "CAPABILITY_IAM"
    assert deploy["confirm_changeset"] is True
    assert deploy["resolve_s3"] is True


@pytest.mark.parametrize(
    ("environment", "command"),
    [
        ("default", "deploy"),
        ("default", "local_invoke"),
        ("prod", "deploy"),
    ],
)
def test_every_override_is_a_template_parameter_with_an_accepted_value(
    samconfig: dict[str, Any], template: dict[str, Any], environment: str, command: str
) -> None:
    parameters = template["Parameters"]

    problems = {
        name: [f"{name} is not a parameter"]
        if name not in parameters
        else violations(parameters[name], value)
        for name, value in overrides(samconfig, environment, command).items()
    }

    assert {name: found for name, found in problems.items() if found} == {}


def test_the_template_defaults_are_themselves_accepted(template: dict[str, Any]) -> None:
    problems = {
        name: violations(parameter, str(parameter["Default"]))
        for name, parameter in template["Parameters"].items()
        if parameter["Type"] in ("String", "Number") and parameter.get("Default") not in ("", None)
    }

    assert {name: found for name, found in problems.items() if found} == {}


def test_only_prod_runs_on_the_schedule(samconfig: dict[str, Any]) -> None:
    assert overrides(samconfig, "default", "deploy")["ScheduleEnabled"] == "false"
    assert overrides(samconfig, "prod", "deploy")["ScheduleEnabled"] == "true"
