"""Offline proof of the deployment: the template, the ASL, the package and the scanners.

Nothing here reaches AWS. The tools that cannot share the dev venv are installed on
first use, idempotently and under a lock (the Makefile targets do the same):
checkov into ``.venv-checkov`` from requirements/checkov.txt, SAM CLI into ``.venv-sam``
from requirements/sam.txt, asl-validator into ``node_modules`` from package-lock.json;
`sam build` and the host-platform package build into ``build/``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
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
AUDIT_ASL = ROOT / "statemachine" / "audit.asl.json"
BUILD = ROOT / "build"
CHECKOV_VENV = ROOT / ".venv-checkov"
CHECKOV_REQUIREMENTS = ROOT / "requirements" / "checkov.txt"
NODE_MODULES = ROOT / "node_modules"
SAM_VENV = ROOT / ".venv-sam"
SAM_REQUIREMENTS = ROOT / "requirements" / "sam.txt"
REGION = "eu-west-2"
ACCOUNT = "123456789012"

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


def _tool_venv(venv: Path, requirements: Path) -> Path:
    """A tool's own venv, installed from its pinned requirements: its bin folder."""
    stamp = venv / ".installed-stamp"
    with _locked(venv.name):
        if not _fresh(stamp, requirements):
            _run([sys.executable, "-m", "venv", "--clear", str(venv)])
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
            _run([*pip, "-r", str(requirements)])
            stamp.touch()
    return venv / "bin"


@pytest.fixture(scope="session")
def checkov_bin() -> Path:
    return _tool_venv(CHECKOV_VENV, CHECKOV_REQUIREMENTS) / "checkov"


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
def sam_cli() -> Path:
    """SAM CLI from its own venv (.venv-sam, requirements/sam.txt), as `make tools` installs it."""
    return _tool_venv(SAM_VENV, SAM_REQUIREMENTS) / "sam"


def _fingerprint() -> str:
    """Of everything a build reads: the template, the Makefile, the functions' files."""
    digest = hashlib.sha256()
    sources = [TEMPLATE, ROOT / "Makefile", ROOT / "samconfig.toml"]
    sources += sorted(p for p in (ROOT / "functions").rglob("*") if p.is_file())
    for path in sources:
        if "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@contextmanager
def _build_once(name: str) -> Iterator[tuple[Path, bool]]:
    """``build/<name>/<fingerprint>`` and whether it still has to be built, under a lock.

    pytest-xdist workers share the one build of a given source tree.
    """
    target = BUILD / name / _fingerprint()
    stamp = target / ".built-stamp"
    with _locked(name):
        if not stamp.exists():
            shutil.rmtree(BUILD / name, ignore_errors=True)
        yield target, not stamp.exists()
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()


@pytest.fixture(scope="session")
def sam_build(sam_cli: Path) -> Path:
    """A real `sam build` of template.yaml, uncached: its build dir (under build/sam-test)."""
    with _build_once("sam-test") as (target, needed):
        if needed:
            started = time.perf_counter()
            _run(
                [str(sam_cli), "build", "--no-cached", "--build-dir", str(target / "build")],
                env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
            )
            print(f"sam build: {time.perf_counter() - started:.1f} s")
    return target / "build"


@pytest.fixture(scope="session")
def host_package() -> Path:
    """The package built by the same Makefile targets, for this machine's Python and CPU.

    The functions' own package is aarch64 and cannot be imported here; this one has the
    same pins and the same files removed, so importing from it alone proves they suffice.
    """
    machine = platform.machine()
    tags = [f"manylinux_2_{minor}_{machine}" for minor in (34, 28, 17)]
    with _build_once("lambda-host") as (target, needed):
        if needed:
            _run(
                [
                    "make",
                    "--no-print-directory",
                    "lambda-deps",
                    "lambda-code",
                    f"LAMBDA_DEPS={target / 'python'}",
                    f"LAMBDA_CODE={target / 'code'}",
                    f"LAMBDA_PYTHON_VERSION={sys.version_info.major}.{sys.version_info.minor}",
                    f"LAMBDA_PLATFORMS={' '.join(tags)}",
                    f"PY={sys.executable}",
                ]
            )
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
def audit_asl_text() -> str:
    return AUDIT_ASL.read_text()


@pytest.fixture(scope="session")
def audit_asl(audit_asl_text: str) -> dict[str, Any]:
    definition: dict[str, Any] = json.loads(audit_asl_text)
    return definition


@pytest.fixture(scope="session")
def transformed() -> dict[str, Any]:
    """The CloudFormation that the SAM transform makes of the template.

    Code and definition locations are replaced the way `sam package` replaces them (the
    definition inlined, the code and the layer S3 objects); the policy map is empty because
    every role is explicit.
    """
    template = load_template()
    template["Globals"]["Function"]["CodeUri"] = "s3://artifacts/totes-ingest/functions.zip"
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::LayerVersion":
            resource["Properties"]["ContentUri"] = "s3://artifacts/totes-ingest/layer.zip"
        if resource["Type"] == "AWS::Serverless::StateMachine":
            uri = resource["Properties"].pop("DefinitionUri")
            resource["Properties"]["Definition"] = json.loads((ROOT / uri).read_text())
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
