"""totes_ingest: copy new and changed ToteSys rows into Parquet in S3, exactly once."""

from __future__ import annotations

__all__ = ["__version__"]
__version__ = "0.1.0"
