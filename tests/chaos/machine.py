"""The chaos tests' state machine: the runner's own
:class:`~totes_ingest.local.runner.LocalDeployment` (same template, same ASL, same
in-process handlers, the one set-up path ``totes-ingest run`` uses), deployed once and
running several executions at once.

moto's S3 handlers are not safe under concurrent requests, where S3 is: ``PutObject``
with ``If-None-Match: *`` checks for the key and then writes it (two racing claims can
both win), ``DeleteObject`` with ``If-Match`` checks the ETag and then deletes, and a
listing racing a delete fails with a ``KeyError`` naming the deleted key. The deployment
wraps its executions in :func:`totes_ingest.local.runner.serialized_s3`, which makes each
S3 request one atomic step; without it an overlap test finds duplicates and failures made
by the mock, not by the pipeline.
"""

from __future__ import annotations

from totes_ingest.local.runner import LocalDeployment, serialized_s3

__all__ = ["LocalDeployment", "serialized_s3"]
