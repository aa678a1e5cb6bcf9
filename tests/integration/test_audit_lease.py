"""The audit's lease on moto's S3: taken once, never while held, taken over only when
expired, released only by its holder; of audits racing for it, exactly one wins."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from tests.conftest import BUCKET, REGION
from totes_ingest.audit_lease import AuditLeaseHeld, Lease, acquire, lease_key, release
from totes_ingest.errors import LakeError
from totes_ingest.lake import Lake
from totes_ingest.local.runner import serialized_s3

pytestmark = pytest.mark.integration

TTL = timedelta(minutes=16)
T0 = datetime(2026, 12, 3, 6, 0, tzinfo=UTC)


def _lease_body(s3: Any, table: str = "staff") -> dict[str, Any]:
    body = s3.get_object(Bucket=BUCKET, Key=lease_key(table))["Body"].read()
    parsed: dict[str, Any] = json.loads(body)
    return parsed


def test_a_free_lease_is_taken_and_records_its_holder_and_expiry(s3: Any) -> None:
    lease = acquire(Lake(s3, BUCKET), "staff", "audit-a", ttl=TTL, now=T0)
    assert lease.key == "_audit/staff/lease"
    assert lease.expires == T0 + TTL
    body = _lease_body(s3)
    assert body["owner"] == "audit-a"
    assert datetime.fromisoformat(body["expires"]) == T0 + TTL


def test_a_held_lease_refuses_a_second_audit_naming_the_table_and_holder(s3: Any) -> None:
    lake = Lake(s3, BUCKET)
    acquire(lake, "staff", "audit-a", ttl=TTL, now=T0)
    with pytest.raises(AuditLeaseHeld, match="table=staff") as refused:
        acquire(lake, "staff", "audit-b", ttl=TTL, now=T0 + TTL - timedelta(seconds=1))
    assert "audit-a" in str(refused.value)
    assert _lease_body(s3)["owner"] == "audit-a"


def test_leases_of_different_tables_are_independent(s3: Any) -> None:
    lake = Lake(s3, BUCKET)
    acquire(lake, "staff", "audit-a", ttl=TTL, now=T0)
    assert acquire(lake, "design", "audit-b", ttl=TTL, now=T0).owner == "audit-b"


def test_a_released_lease_can_be_taken_again_at_once(s3: Any) -> None:
    lake = Lake(s3, BUCKET)
    lease = acquire(lake, "staff", "audit-a", ttl=TTL, now=T0)
    assert release(lake, lease) is True
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="_audit/")
    assert acquire(lake, "staff", "audit-b", ttl=TTL, now=T0).owner == "audit-b"


def test_an_expired_lease_is_taken_over_and_its_old_holder_cannot_release_it(
    s3: Any,
) -> None:
    # GIVEN an audit whose lease expired (it can no longer be running)
    lake = Lake(s3, BUCKET)
    stale = acquire(lake, "staff", "audit-a", ttl=TTL, now=T0)
    # WHEN another audit comes after the expiry
    fresh = acquire(lake, "staff", "audit-b", ttl=TTL, now=T0 + TTL + timedelta(seconds=1))
    # THEN it holds the lease, and the stale holder's release leaves it in place
    assert fresh.owner == "audit-b"
    assert release(lake, stale) is False
    assert _lease_body(s3)["owner"] == "audit-b"
    assert release(lake, fresh) is True


def test_a_lease_that_is_not_json_is_a_lake_error_not_a_takeover(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key=lease_key("staff"), Body=b"not a lease")
    with pytest.raises(LakeError, match="is not a lease"):
        acquire(Lake(s3, BUCKET), "staff", "audit-a", ttl=TTL, now=T0)


def _race(owners: list[str], now: datetime) -> tuple[list[Lease], list[Exception]]:
    """Each owner acquires the staff lease in its own thread, all released at once.

    moto's S3 checks a condition and then writes as two steps; S3 evaluates a
    conditional put atomically, which ``serialized_s3`` restores (as the runner does).
    """
    won: list[Lease] = []
    lost: list[Exception] = []
    gate = threading.Barrier(len(owners))
    clients = [boto3.client("s3", region_name=REGION) for _ in owners]

    def contend(owner: str, client: Any) -> None:
        gate.wait(timeout=10)
        try:
            won.append(acquire(Lake(client, BUCKET), "staff", owner, ttl=TTL, now=now))
        except AuditLeaseHeld as e:
            lost.append(e)

    threads = [
        threading.Thread(target=contend, args=(o, c)) for o, c in zip(owners, clients, strict=True)
    ]
    with serialized_s3():
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    return won, lost


@pytest.mark.parametrize("attempt", range(5))
def test_of_audits_racing_for_a_free_lease_exactly_one_wins(s3: Any, attempt: int) -> None:
    owners = [f"audit-{i}" for i in range(8)]
    won, lost = _race(owners, T0)
    assert len(won) == 1, won
    assert len(lost) == len(owners) - 1
    assert _lease_body(s3)["owner"] == won[0].owner


@pytest.mark.parametrize("attempt", range(5))
def test_of_audits_racing_for_an_expired_lease_exactly_one_wins(s3: Any, attempt: int) -> None:
    acquire(Lake(s3, BUCKET), "staff", "audit-stale", ttl=TTL, now=T0)
    owners = [f"audit-{i}" for i in range(8)]
    won, lost = _race(owners, T0 + TTL + timedelta(minutes=1))
    assert len(won) == 1, won
    assert len(lost) == len(owners) - 1
    assert _lease_body(s3)["owner"] == won[0].owner
