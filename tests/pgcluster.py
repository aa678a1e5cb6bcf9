"""Private PostgreSQL clusters with settings of their own, for the tests that need them.

Built from the embedded server's own binaries (pgserver), so a laptop needs nothing
installed: ``max_prepared_transactions`` for two-phase commit, ``standby.signal`` for a
hot standby (a cluster in recovery with no primary: read-only, ``pg_is_in_recovery()``).
Each listens on a unix socket in its own folder, and is stopped and removed afterwards.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pg8000.native
from pgserver._commands import POSTGRES_BIN_PATH, initdb, pg_ctl
from pgserver.utils import ensure_user_exists

from totes_ingest.local.dburl import connect

_SYSTEM_USER = "pgserver" if os.geteuid() == 0 else None


class PrivateCluster:
    """A throwaway cluster: ``with PrivateCluster(max_prepared_transactions=5) as c``."""

    def __init__(
        self,
        *,
        standby: bool = False,
        replica_of: PrivateCluster | None = None,
        **settings: str | int,
    ) -> None:
        """``standby``: a standby with no primary; ``replica_of``: a streaming replica."""
        self.root = Path(tempfile.mkdtemp(prefix="totes-cluster-", dir="/tmp"))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.standby = standby
        self.primary = replica_of
        self.settings = {"listen_addresses": "''", **settings}

    def __enter__(self) -> PrivateCluster:
        self.root.chmod(0o777)
        if _SYSTEM_USER is not None:
            ensure_user_exists(_SYSTEM_USER)
            user = pwd.getpwnam(_SYSTEM_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.data.mkdir(mode=0o700)
        if _SYSTEM_USER is not None:
            os.chown(self.data, user.pw_uid, user.pw_gid)
        if self.primary is not None:
            # A base backup of the primary, streaming from it (-R writes standby.signal).
            backup = [
                str(POSTGRES_BIN_PATH / "pg_basebackup"),
                *("-D", str(self.data), "-R", "-X", "stream"),
                *("-h", str(self.primary.socket_dir), "-U", "postgres"),
            ]
            subprocess.run(backup, check=True, user=_SYSTEM_USER, timeout=120, capture_output=True)
        else:
            initdb(
                ["--auth=trust", "-U", "postgres", "--encoding=utf8"],
                pgdata=self.data,
                user=_SYSTEM_USER,
            )
        self._start()
        if self.standby:
            self._stop()
            signal = self.data / "standby.signal"
            signal.touch()
            if _SYSTEM_USER is not None:
                os.chown(signal, user.pw_uid, user.pw_gid)
            self._start()
        return self

    def _start(self) -> None:
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        pg_ctl(
            ["-w", "-o", f"-k {self.socket_dir} {options}", "-l", str(self.root / "log"), "start"],
            pgdata=self.data,
            user=_SYSTEM_USER,
            timeout=60,
        )

    def _stop(self) -> None:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data, user=_SYSTEM_USER, timeout=60)

    def __exit__(self, *exc: object) -> None:
        try:
            self._stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def connection_settings(self) -> dict[str, Any]:
        return {
            "user": "postgres",
            "password": "",
            "database": "postgres",
            "unix_sock": f"{self.socket_dir}/.s.PGSQL.5432",
        }

    def connect(self, **extra: Any) -> pg8000.native.Connection:
        return connect(self.connection_settings, **extra)
