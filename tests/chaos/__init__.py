"""Chaos tests: exactly-once ingestion under concurrent writers, faults and overlapping runs."""
