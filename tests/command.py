"""The ``totes-ingest`` command run as a user runs it, in a separate process, for the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

CANARY_PASSWORD = "canary-pw-7f3a"  # must never appear in any output

_MAIN = "import sys\nfrom totes_ingest.local.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def database_url(settings: dict[str, Any]) -> str:
    """A URL for pg8000 settings (unix socket or TCP), with a password if there is one."""
    password = settings.get("password") or CANARY_PASSWORD  # trust auth ignores it
    auth = f"{quote(settings['user'])}:{quote(password, safe='')}@"
    if "unix_sock" in settings:
        directory, _, name = str(settings["unix_sock"]).rpartition("/")
        port = name.rsplit(".", 1)[-1]
        return f"postgresql://{auth}:{port}/{settings['database']}?host={directory}"
    return f"postgresql://{auth}{settings['host']}:{settings['port']}/{settings['database']}"


def totes_ingest(
    *args: str, cwd: Path, prelude: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``totes-ingest ARGS``; ``prelude`` is Python run first in the same process (to
    patch it, say), then the command's ``main``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TOTES_"))}
    env["END_TIME_SAFETY_MARGIN_SECONDS"] = "0"  # nothing writes beside these tests
    command = ["-m", "totes_ingest.local"] if prelude is None else ["-c", prelude + _MAIN]
    return subprocess.run(
        [sys.executable, *command, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
