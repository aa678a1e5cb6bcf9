"""`sam build` builds the package with any Python 3.11+ and no Docker, and it fits in Lambda.

A real `sam build` of template.yaml (SAM CLI pinned in requirements/sam.txt): the pinned
dependencies land once, in the DependenciesLayer, as arm64 wheels for python3.12; each
function's code is the library without ``local/``. The same Makefile targets built for this
machine prove that the handlers import and run from the package alone.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from samtranslator.yaml_helper import yaml_parse

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[2]
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
LAYER = "DependenciesLayer"
FUNCTIONS = [
    "StartRunFunction",
    "GetLastIngestTimeFunction",
    "QueryToParquetFunction",
    "CommitTableFunction",
    "AggregateFunction",
]
HANDLERS = ["start_run", "get_last_ingest_time", "query_to_parquet", "commit_table", "aggregate"]
AARCH64 = (183).to_bytes(2, "little")  # ELF e_machine EM_AARCH64
# What every Lambda runtime image provides: the manylinux libraries (and zlib).
SYSTEM_LIBRARIES = {
    "ld-linux-aarch64.so.1",
    "libc.so.6",
    "libdl.so.2",
    "libgcc_s.so.1",
    "libm.so.6",
    "libpthread.so.0",
    "librt.so.1",
    "libstdc++.so.6",
    "libz.so.1",
}


def size_of(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def pins(path: Path) -> dict[str, str]:
    """``{normalised name: version}`` of a requirements file's ``name==version`` lines."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^]]*\])?==(\S+)", line)
        if match:
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(3)
    return found


def shared_libraries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.so*") if p.is_file() and p.read_bytes()[:4] == b"\x7fELF"]


@pytest.fixture(scope="module")
def built_template(sam_build: Path) -> dict[str, Any]:
    template: dict[str, Any] = yaml_parse((sam_build / "template.yaml").read_text())
    return template


@pytest.fixture(scope="module")
def layer(sam_build: Path) -> Path:
    return sam_build / LAYER / "python"


def test_sam_build_builds_the_layer_and_every_function(
    sam_build: Path, built_template: dict[str, Any]
) -> None:
    resources = built_template["Resources"]

    assert resources[LAYER]["Properties"]["ContentUri"] == LAYER
    for function in FUNCTIONS:
        assert resources[function]["Properties"]["CodeUri"] == function
        assert (sam_build / function / "totes_ingest" / "handlers").is_dir()


def test_every_function_runs_on_the_one_dependency_layer(
    template: dict[str, Any], sam_build: Path
) -> None:
    assert template["Globals"]["Function"]["Layers"] == [{"Ref": LAYER}]
    for function in FUNCTIONS:
        assert "Layers" not in template["Resources"][function]["Properties"]
        assert not (sam_build / function / "pyarrow").exists()


@pytest.mark.parametrize("function", FUNCTIONS)
def test_a_function_package_holds_the_library_only(sam_build: Path, function: str) -> None:
    package = sam_build / function
    library = package / "totes_ingest"

    assert {p.name for p in package.iterdir()} <= {"totes_ingest", "certs"}
    assert not (library / "local").exists()
    assert not [p for p in package.rglob("*") if p.name in ("tests", "__pycache__", "conftest.py")]
    assert {p.stem for p in (library / "handlers").glob("*.py")} >= set(HANDLERS)


def test_the_package_of_a_function_with_its_layer_fits_lambdas_250_mb_limit(
    sam_build: Path, layer: Path
) -> None:
    code = size_of(sam_build / "QueryToParquetFunction")
    dependencies = size_of(layer)
    size = code + dependencies
    print(
        f"deployment package (python3.12 arm64, unzipped): code {code / 1024:.0f} KiB + layer "
        f"{dependencies / 1024 / 1024:.1f} MiB = {size / 1024 / 1024:.1f} MiB, "
        f"{100 * size / LAMBDA_UNZIPPED_LIMIT:.0f}% of the limit"
    )

    assert size < LAMBDA_UNZIPPED_LIMIT


def test_the_layer_holds_no_tests_headers_or_bytecode(layer: Path) -> None:
    unwanted = [
        p.relative_to(layer)
        for p in layer.rglob("*")
        if (p.name in ("tests", "include", "__pycache__") or p.suffix in (".pyc", ".pyx", ".pxd"))
        and ".dist-info" not in str(p)  # licences are kept
    ]

    assert unwanted == []
    assert not (layer / "bin").exists()


def test_the_layer_holds_binary_wheels_for_arm64_only(layer: Path) -> None:
    machines = {so.read_bytes()[18:20] for so in shared_libraries(layer)}

    assert machines == {AARCH64}


def test_every_shared_library_of_the_layer_finds_the_libraries_it_needs(layer: Path) -> None:
    readelf = shutil.which("readelf")
    assert readelf, "readelf (binutils) is needed to read the libraries' dependencies"
    libraries = shared_libraries(layer)
    present = {so.name for so in libraries}

    missing = {}
    for so in libraries:
        dynamic = subprocess.run(
            [readelf, "--dynamic", str(so)], capture_output=True, text=True, check=True
        ).stdout
        needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^]]+)\]", dynamic))
        if needed - present - SYSTEM_LIBRARIES:
            missing[str(so.relative_to(layer))] = sorted(needed - present - SYSTEM_LIBRARIES)

    assert libraries
    assert missing == {}


def test_the_layer_holds_exactly_the_pinned_tree(layer: Path) -> None:
    installed = {}
    for info in layer.glob("*.dist-info"):
        name, version = info.name.removesuffix(".dist-info").rsplit("-", 1)
        installed[re.sub(r"[-_.]+", "-", name).lower()] = version

    assert installed == pins(ROOT / "functions" / "requirements.txt")


def test_the_functions_run_on_the_versions_the_tests_run_on() -> None:
    lambda_pins = pins(ROOT / "functions" / "requirements.txt")
    dev_pins = pins(ROOT / "requirements" / "dev.txt")

    assert {n: (v, dev_pins.get(n)) for n, v in lambda_pins.items() if dev_pins.get(n) != v} == {}


def test_the_handlers_import_and_write_parquet_from_the_package_alone(
    host_package: Path, tmp_path: Path
) -> None:
    # -I -S: no site-packages, no PYTHONPATH; only the standard library and the package.
    script = textwrap.dedent(
        f"""
        import importlib, io, sys
        sys.path[:0] = [{str(host_package / "code")!r}, {str(host_package / "python")!r}]
        for name in {HANDLERS!r}:
            importlib.import_module("totes_ingest.handlers." + name)
        import boto3, numpy, pyarrow.csv, pyarrow.parquet
        from botocore.stub import Stubber
        table = pyarrow.csv.read_csv(io.BytesIO(b"id,name\\n1,a\\n2,b\\n"))
        pyarrow.parquet.write_table(table, {str(tmp_path / "t.parquet")!r}, compression="zstd")
        assert pyarrow.parquet.read_table({str(tmp_path / "t.parquet")!r}).num_rows == 2
        assert int(numpy.frombuffer(b"\\n\\n", dtype=numpy.uint8).sum()) == 20
        s3 = boto3.client("s3", region_name="eu-west-2")
        with Stubber(s3) as stub:
            stub.add_response("put_object", {{}}, {{"Bucket": "b", "Key": "k", "Body": b"",
                                                   "IfNoneMatch": "*"}})
            s3.put_object(Bucket="b", Key="k", Body=b"", IfNoneMatch="*")
        try:
            import totes_ingest.local
        except ModuleNotFoundError:
            print("ok")
        """
    )

    run = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, check=False
    )

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
