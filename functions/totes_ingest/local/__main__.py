"""``python -m totes_ingest.local``: the same as the ``totes-ingest`` console script."""

from __future__ import annotations

from totes_ingest.local.cli import main

raise SystemExit(main())
