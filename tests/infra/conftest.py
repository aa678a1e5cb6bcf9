"""Offline proof of the deployment: the template, the ASL, the package and the scanners.

Nothing here reaches AWS. The tools that cannot share the dev venv are installed on
first use, idempotently and under a lock (the Makefile targets do the same):
checkov into ``.venv-checkov`` from requirements/checkov.txt, asl-validator into
``node_modules`` from package-lock.json, and the Lambda dependencies for the target
platform into ``build/``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
ASL = ROOT / "statemachine" / "ingest.asl.json"
BUILD = ROOT / "build"
CHECKOV_VENV = ROOT / ".venv-checkov"
CHECKOV_REQUIREMENTS = ROOT / "requirements" / "checkov.txt"
NODE_MODULES = ROOT / "node_modules"
LAMBDA_REQUIREMENTS = ROOT / "functions" / "requirements.txt"
REGION = "eu-west-2"
ACCOUNT = "123456789012"

# What `sam build` runs for python3.12 on arm64 (Amazon Linux 2023, glibc 2.34): wheels
# of any manylinux tag up to 2.34, never an sdist.
LAMBDA_PYTHON = "3.12"
LAMBDA_PLATFORMS = ("manylinux_2_34_aarch64", "manylinux_2_28_aarch64", "manylinux2014_aarch64")

PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


# -- installing the tools ---------------------------------------------------------------


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """One installer at a time, across pytest-xdist workers and parallel runs."""
    BUILD.mkdir(exist_ok=True)
    with (BUILD / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fresh(stamp: Path, *sources: Path) -> bool:
    """make's rule: the stamp exists and is newer than everything it was built from."""
    return stamp.exists() and all(stamp.stat().st_mtime >= s.stat().st_mtime for s in sources)


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True, cwd=ROOT, **kwargs)


@pytest.fixture(scope="session")
def checkov_bin() -> Path:
    stamp = CHECKOV_VENV / ".installed-stamp"
    with _locked("checkov"):
        if not _fresh(stamp, CHECKOV_REQUIREMENTS):
            _run([sys.executable, "-m", "venv", "--clear", str(CHECKOV_VENV)])
            pip = [str(CHECKOV_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
            _run([*pip, "-r", str(CHECKOV_REQUIREMENTS)])
            stamp.touch()
    return CHECKOV_VENV / "bin" / "checkov"


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """node_modules installed from package-lock.json (asl-validator, mermaid, jsdom)."""
    stamp = NODE_MODULES / ".installed-stamp"
    with _locked("node_modules"):
        if not _fresh(stamp, ROOT / "package.json", ROOT / "package-lock.json"):
            _run(["npm", "ci", "--no-audit", "--no-fund"])
            stamp.touch()
    return NODE_MODULES


@pytest.fixture(scope="session")
def lambda_dependencies() -> Path:
    """functions/requirements.txt installed for the Lambda platform, cached by content."""
    key = hashlib.sha256(
        LAMBDA_REQUIREMENTS.read_bytes() + repr((LAMBDA_PYTHON, LAMBDA_PLATFORMS)).encode()
    ).hexdigest()[:16]
    target = BUILD / "lambda-deps" / key
    stamp = target / ".installed-stamp"
    with _locked("lambda-deps"):
        if not stamp.exists():
            shutil.rmtree(target, ignore_errors=True)
            platforms = [arg for p in LAMBDA_PLATFORMS for arg in ("--platform", p)]
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    *platforms,
                    "--implementation",
                    "cp",
                    "--python-version",
                    LAMBDA_PYTHON,
                    "--only-binary=:all:",
                    "--target",
                    str(target),
                    "-r",
                    str(LAMBDA_REQUIREMENTS),
                ]
            )
            stamp.touch()
    return target


# -- the template, as written and as deployed ------------------------------------------


def load_template() -> dict[str, Any]:
    """template.yaml with its short-form intrinsics (!Ref, !Sub...) in long form."""
    template: dict[str, Any] = yaml_parse(TEMPLATE.read_text())
    return template


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="session")
def asl_text() -> str:
    return ASL.read_text()


@pytest.fixture(scope="session")
def asl(asl_text: str) -> dict[str, Any]:
    definition: dict[str, Any] = json.loads(asl_text)
    return definition


@pytest.fixture(scope="session")
def transformed(asl: dict[str, Any]) -> dict[str, Any]:
    """The CloudFormation that the SAM transform makes of the template.

    Code and definition locations are replaced the way `sam package` replaces them (the
    definition inlined, the code an S3 object); the policy map is empty because every role
    is explicit.
    """
    template = load_template()
    template["Globals"]["Function"]["CodeUri"] = "s3://artifacts/totes-ingest/functions.zip"
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::StateMachine":
            del resource["Properties"]["DefinitionUri"]
            resource["Properties"]["Definition"] = asl
    translator = Translator(None, Parser(), boto_session=boto3.Session(region_name=REGION))
    result: dict[str, Any] = translator.translate(
        template,
        parameter_values={},
        passthrough_metadata=True,
        get_managed_policy_map=lambda: {},
    )
    return result


@pytest.fixture(scope="session")
def transformed_path(transformed: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("transformed") / "template.json"
    path.write_text(json.dumps(transformed, indent=1))
    return path
