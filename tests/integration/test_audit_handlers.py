"""AuditTable with its sample event: one table audited under its lease, against a real
PostgreSQL and moto's S3."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import BUCKET
from tests.lakecheck import lake_keys, read_table
from tests.lambda_context import EVENTS, Context
from totes_ingest.audit_lease import AuditLeaseHeld, acquire, lease_key
from totes_ingest.errors import InvalidEvent
from totes_ingest.handlers import audit_table
from totes_ingest.ingest import lambda_handler as ingest_handler
from totes_ingest.lake import Lake
from totes_ingest.local.dburl import Connect
from totes_ingest.local.seed import seed

pytestmark = pytest.mark.integration


def _event() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS / "audit_table.json").read_text())
    return loaded


@pytest.fixture
def ingested(
    db_secret: dict[str, Any], s3: Any, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """A seeded ToteSys database whose currency table is in the lake."""
    monkeypatch.setenv("END_TIME_SAFETY_MARGIN_SECONDS", "0")
    conn = connect(db_secret)
    conn.run(f"ALTER DATABASE \"{db_secret['database']}\" SET timezone = 'UTC'")
    conn.run("SET TimeZone = 'UTC'")
    seed(conn, scale=1)
    assert "currency" in ingest_handler({"tables_to_query": ["currency"]}, Context())
    yield conn
    conn.close()


def _lose_a_version(conn: Any) -> int:
    """A row written with a cursor an hour below the watermark: no window reads it."""
    ((key,),) = conn.run(
        "INSERT INTO currency (currency_code, last_updated) "
        "VALUES ('JPY', now() - interval '1 hour') RETURNING currency_id"
    )
    return int(key)


def _currency_keys(s3: Any) -> list[int]:
    return sorted(row["currency_id"] for row in read_table(s3, "currency"))


def test_a_whole_table_is_reported_whole_and_its_lease_released(ingested: Any, s3: Any) -> None:
    before = lake_keys(s3)
    found = audit_table.lambda_handler(_event(), Context())
    assert found["table"] == "currency"
    assert (found["status"], found["missing"], found["repaired"]) == ("whole", 0, 0)
    assert (found["newer_in_lake"], found["deleted"], found["repair_objects"]) == (0, 0, 0)
    assert found["source_rows"] == 3
    json.dumps(found)  # the Map's result: JSON, and small
    assert lake_keys(s3) == before  # nothing written, the lease gone again


def test_a_lost_version_is_repaired_once_and_a_second_audit_writes_nothing(
    ingested: Any, s3: Any
) -> None:
    # GIVEN a version below the watermark that the pipeline never reads
    lost = _lose_a_version(ingested)
    assert lost not in _currency_keys(s3)
    # WHEN the step audits the table, twice
    first = audit_table.lambda_handler(_event(), Context())
    after_first = lake_keys(s3)
    second = audit_table.lambda_handler(_event(), Context())
    # THEN the first repairs it, exactly once, and the second finds and writes nothing
    assert (first["status"], first["missing"], first["repaired"]) == ("repaired", 1, 1)
    assert first["repair_objects"] == 1
    assert _currency_keys(s3).count(lost) == 1
    assert (second["status"], second["missing"], second["repaired"]) == ("whole", 0, 0)
    assert lake_keys(s3) == after_first
    assert not [k for k in after_first if k.startswith("_audit/")]


def test_report_only_finds_the_lost_version_and_writes_nothing(
    ingested: Any, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIT_REPAIR", "false")
    _lose_a_version(ingested)
    before = lake_keys(s3)
    found = audit_table.lambda_handler(_event(), Context())
    assert (found["status"], found["missing"], found["repaired"]) == ("not whole", 1, 0)
    assert lake_keys(s3) == before


def test_a_table_whose_lease_is_held_is_not_audited(ingested: Any, s3: Any) -> None:
    # GIVEN another audit of currency still running
    acquire(Lake(s3, BUCKET), "currency", "audit-other", ttl=timedelta(minutes=16))
    _lose_a_version(ingested)
    before = lake_keys(s3)
    # WHEN this one starts, THEN it refuses, writes nothing and leaves the lease alone
    with pytest.raises(AuditLeaseHeld, match="audit-other"):
        audit_table.lambda_handler(_event(), Context())
    assert lake_keys(s3) == before
    body = json.loads(s3.get_object(Bucket=BUCKET, Key=lease_key("currency"))["Body"].read())
    assert body["owner"] == "audit-other"


def test_an_expired_lease_does_not_stop_the_audit(ingested: Any, s3: Any) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    acquire(Lake(s3, BUCKET), "currency", "audit-crashed", ttl=timedelta(minutes=16), now=long_ago)
    found = audit_table.lambda_handler(_event(), Context())
    assert found["status"] == "whole"
    assert not [k for k in lake_keys(s3) if k.startswith("_audit/")]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"audit_id": "a"}, "'table'"),
        ({"table": "currency"}, "'audit_id'"),
        ({"table": "currency", "audit_id": "a", "full": "yes"}, "'full'"),
        ({"table": "currencies", "audit_id": "a"}, "currencies"),
    ],
)
def test_a_bad_event_is_an_invalid_event(
    ingested: Any, s3: Any, event: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidEvent, match=message):
        audit_table.lambda_handler(event, Context())
    assert not [k for k in lake_keys(s3) if k.startswith("_audit/")]


def test_the_step_publishes_the_tables_missing_and_repaired_versions(
    ingested: Any, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    _lose_a_version(ingested)
    capsys.readouterr()
    audit_table.lambda_handler(_event(), Context())
    out = capsys.readouterr().out.splitlines()
    emf = [json.loads(line) for line in out if line.startswith('{"_aws"')]
    (document,) = [d for d in emf if "MissingVersions" in d]
    assert (document["step"], document["table"]) == ("AuditTable", "currency")
    assert (document["MissingVersions"], document["RepairedVersions"]) == ([1.0], [1.0])
