"""The deployment package, built the way `sam build` builds it, fits in Lambda.

The dependencies are installed for the functions' platform (python3.12, arm64,
manylinux wheels only) into a cached build directory, the functions/ code is laid beside
them, and the unzipped total is held against Lambda's 250 MB limit.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[2]
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
# `sam build` leaves these out of the code it copies.
BUILD_EXCLUDES = shutil.ignore_patterns("__pycache__", "*.pyc", "requirements.txt")


def size_of(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


@pytest.fixture(scope="module")
def package(lambda_dependencies: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deps + code in one folder, as .aws-sam/build/<Function>/ would hold it.

    The cached dependencies are hard-linked, not copied: same bytes, a fraction of the time.
    """
    target = tmp_path_factory.mktemp("package") / "QueryToParquetFunction"
    shutil.copytree(
        lambda_dependencies,
        target,
        ignore=shutil.ignore_patterns(".installed-stamp"),
        copy_function=_link_or_copy,
    )
    shutil.copytree(ROOT / "functions", target, ignore=BUILD_EXCLUDES, dirs_exist_ok=True)
    return target


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def test_the_unzipped_package_fits_lambdas_250_mb_limit(package: Path) -> None:
    size = size_of(package)
    print(
        f"deployment package (python3.12 arm64, unzipped): {size / 1024 / 1024:.1f} MiB "
        f"= {size:,} bytes, {100 * size / LAMBDA_UNZIPPED_LIMIT:.0f}% of the limit"
    )

    assert size < LAMBDA_UNZIPPED_LIMIT


def test_the_package_holds_every_handler_module(package: Path) -> None:
    handlers = {p.stem for p in (package / "totes_ingest" / "handlers").glob("*.py")}

    assert handlers >= {
        "start_run",
        "get_last_ingest_time",
        "query_to_parquet",
        "write_to_s3",
        "aggregate",
    }


def test_the_package_holds_binary_wheels_for_arm64_only(package: Path) -> None:
    extensions = list(package.rglob("*.so"))
    machines = {so.read_bytes()[18:20] for so in extensions}

    aarch64 = (183).to_bytes(2, "little")  # ELF e_machine EM_AARCH64
    assert extensions
    assert machines == {aarch64}


def test_the_package_holds_each_pinned_runtime_dependency(package: Path) -> None:
    pins = [
        line.split("==")
        for line in (ROOT / "functions" / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    ]

    installed = {p.name.lower() for p in package.glob("*.dist-info")}

    for name, version in pins:
        distribution = name.split("[")[0].replace("-", "_").lower()
        assert f"{distribution}-{version}.dist-info" in installed
