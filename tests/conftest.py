"""Shared fixtures: a real PostgreSQL (fresh database per test) and moto for AWS.

The server is ``TOTES_DATABASE_URL`` when set, else an embedded PostgreSQL started once
per test process.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pg8000.native
import pytest
from moto import mock_aws

from totes_ingest import config
from totes_ingest.local import dburl
from totes_ingest.local.dburl import Connect, settings_from_url, with_database
from totes_ingest.local.embedded import embedded_database_url
from totes_ingest.local.totesys import create_schema

REGION = "eu-west-2"
BUCKET = "totes-ingest-test-bucket"
SECRET_NAME = "totes-ingest/test/totesys"


@pytest.fixture(scope="session")
def server_settings() -> Iterator[dict[str, Any]]:
    """pg8000 settings of the PostgreSQL server the tests use (maintenance database).

    The embedded server's data lives outside pytest's rotating temporary folders (another
    pytest process may delete those) in a folder its unprivileged server user can reach.
    """
    url = os.environ.get("TOTES_DATABASE_URL")
    if url:
        yield settings_from_url(url)
        return
    data_dir = Path(tempfile.mkdtemp(prefix="totes-test-pg-"))
    data_dir.chmod(0o755)
    # Registered first so it runs last: after pgserver's own exit hook stops the server.
    atexit.register(shutil.rmtree, data_dir, ignore_errors=True)
    yield settings_from_url(embedded_database_url(data_dir / "data"))


@pytest.fixture(scope="session")
def connect() -> Connect:
    """Open a connection from pg8000 settings (``db_settings``, ``db_secret``...), with
    any pg8000 option (``application_name=...``); the test closes it."""
    return dburl.connect


@pytest.fixture
def db_settings(server_settings: dict[str, Any], connect: Connect) -> Iterator[dict[str, Any]]:
    """Settings of a fresh, empty database, dropped after the test."""
    name = f"totes_test_{uuid.uuid4().hex[:12]}"
    admin = connect(server_settings)
    admin.run(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_settings, name)
    finally:
        admin.run(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = :name AND pid <> pg_backend_pid()",
            name=name,
        )
        admin.run(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture
def conn(db_settings: dict[str, Any], connect: Connect) -> Iterator[pg8000.native.Connection]:
    connection = connect(db_settings)
    yield connection
    connection.close()


@pytest.fixture
def totesys_settings(db_settings: dict[str, Any], connect: Connect) -> dict[str, Any]:
    """A fresh database holding the (empty) ToteSys schema."""
    connection = connect(db_settings)
    try:
        create_schema(connection)
    finally:
        connection.close()
    return db_settings


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto for every AWS API, with fake credentials so nothing can reach AWS."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield


@pytest.fixture
def s3(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    client = boto3.client("s3", region_name=REGION)
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    monkeypatch.setenv(config.INGEST_BUCKET, BUCKET)
    return client


@pytest.fixture
def db_secret(
    aws_env: None, totesys_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """A Secrets Manager secret pointing at a fresh ToteSys database."""
    client = boto3.client("secretsmanager", region_name=REGION)
    client.create_secret(Name=SECRET_NAME, SecretString=json.dumps(totesys_settings))
    monkeypatch.setenv(config.DB_SECRET_NAME, SECRET_NAME)
    monkeypatch.setenv(config.DB_SSL_MODE, "disable")
    return totesys_settings


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
