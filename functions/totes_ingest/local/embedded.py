"""An embedded PostgreSQL server (pgserver) for laptops and tests."""

from __future__ import annotations

from pathlib import Path


def embedded_database_url(data_dir: Path) -> str:
    """Start (or reuse) a PostgreSQL server whose data lives in ``data_dir``; its URL.

    The server listens on a unix socket only and is shut down when the last process using
    it exits.
    """
    import pgserver  # imported lazily: a dev-only dependency, absent from Lambda

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
    return str(server.get_uri())
