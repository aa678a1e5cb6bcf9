"""The AuditTable step: one table audited under its lease, and a small summary of it.

The audit itself is ``audit.audit_table``; this adds what a step in AWS needs: the event
parsed, the table's lease held around the audit (``audit_lease``: two audits of a table
never run at once), and a summary small enough for the Map's results.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any, Final

from totes_ingest.audit import AuditSettings, TableAudit, audit_table
from totes_ingest.audit_lease import acquire, release
from totes_ingest.errors import InvalidEvent
from totes_ingest.lake import Lake
from totes_ingest.source import resolve_tables

Payload = dict[str, Any]

SUMMARY_FIELDS: Final = (
    "table",
    "status",
    "missing",
    "repaired",
    "newer_in_lake",
    "deleted",
    "tombstoned",
    "revived",
    "source_rows",
    "lake_versions",
    "judged_from",
    "judged_until",
    "reason",
)


def _text(event: dict[str, Any], name: str) -> str:
    value = event.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"AuditTable input needs a non-empty string '{name}'")
    return value


def audit_one(
    event: object, conn: Any, lake: Lake, settings: AuditSettings, *, lease_ttl: timedelta
) -> Payload:
    """Audit the event's ``table`` (``audit_id`` names the audit; optional ``full``: all
    history; ``source_timezone``: the zone StartRun resolved) while holding its lease."""
    if not isinstance(event, dict):
        raise InvalidEvent("AuditTable input must be a JSON object")
    table, audit_id = _text(event, "table"), _text(event, "audit_id")
    full = event.get("full", False)
    if not isinstance(full, bool):
        raise InvalidEvent("AuditTable input 'full' must be true or false", table=table)
    if full:
        settings = replace(settings, horizon_days=None)
    zone = event.get("source_timezone")
    if isinstance(zone, str) and zone:
        settings = replace(settings, source_timezone=zone)
    resolve_tables(conn, [table], settings.schema)  # InvalidEvent before any lease is taken
    lease = acquire(lake, table, audit_id, ttl=lease_ttl)
    try:
        report = audit_table(conn, lake, table, settings, audit_id=audit_id)
    finally:
        release(lake, lease)
    return summary(report)


def summary(report: TableAudit) -> Payload:
    """The table's findings as counts (the keys and examples are in its log line)."""
    payload = report.to_payload()
    found = {name: payload[name] for name in SUMMARY_FIELDS}
    found["repair_objects"] = len(report.repair_keys)
    return found
