"""Faults injected into a running pipeline, every decision drawn from the chaos seed.

Three kinds:

- **step faults**: a pipeline step or a commit-protocol operation (``pipeline.start_run``,
  ``pipeline.find_watermark``, ``pipeline.stage_table``, ``pipeline.plan_windows`` (the
  window_plan function, as stage_table calls it), ``pipeline.commit_windows``,
  ``Lake.commit``, ``Lake._finish``, ``Lake.verify_staged``)
  raises either *before* doing its work or *after* it succeeded (the work is done, the
  caller never hears of it). The error is one the ASL retries (SourceUnavailable,
  LakeUnavailable) or :class:`ChaosCrash`, which it does not. With windows cut into
  sub-windows (MAX_WINDOW_ROWS): a StageWindow child fails as ``stage_table`` does (its
  subject is ``table#index``), and CommitWindows dies between two sub-window commits when
  ``Lake.commit`` fails after its work or ``Lake.verify_staged`` (checked before each
  commit) fails before it.
- **plan faults**: a saved plan of sub-windows (``_staging/<table>/plan-<run>.json``)
  vanishes or is spoiled, right after QueryToParquet writes it (the Map reads it next) or
  just before CommitWindows reads it: deleted, not JSON, two items swapped, another run's,
  a middle item dropped (the chain has a gap), or its last items dropped.
- **S3 faults**: a request of the handlers' S3 clients fails with SlowDown or
  InternalError (retried by the ASL) or AccessDenied (not retried), before reaching the
  bucket or after the bucket carried it out (a lost response); botocore's own retries
  are bypassed, as if they had all been used up. Or it is held up for up to a second
  (throttled and retried by the client) and then carried out.
- **session kills**: :class:`SessionKiller` calls ``pg_terminate_backend`` on the
  pipeline's database sessions (``application_name = 'totes-ingest'``).
- **ghost invocations**: Lambda runs a function at least once, not exactly once (a
  service-side retry may run it again while, or after, the first attempt runs). A ghost
  is a second run of a task's handler with the same event, in its own thread, a moment
  later, whose result nobody reads.

A decision is a function of the seed, the site, the subject (table) and how many times
that site was reached for that subject, so a seed always yields the same plan whatever
the threads' interleaving; the interleaving itself (and so the exact outcome) is up to
the scheduler.
"""

from __future__ import annotations

import copy
import functools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pg8000.native
import pytest
from botocore.exceptions import ClientError

from totes_ingest import aws, pipeline
from totes_ingest.config import CLAIMS_PREFIX, STAGING_PREFIX
from totes_ingest.db_connections import APPLICATION_NAME
from totes_ingest.errors import IngestError, LakeUnavailable, SourceUnavailable
from totes_ingest.handlers import commit_table, get_last_ingest_time, query_to_parquet
from totes_ingest.lake import Lake
from totes_ingest.local import runner
from totes_ingest.local.dburl import connect
from totes_ingest.sub_windows import PLAN_INDEX

Moment = Literal["before", "after"]


class ChaosCrash(RuntimeError):
    """A step killed by the chaos test with an error the state machine does not retry."""


@dataclass(frozen=True)
class Intensity:
    """How hard one round of executions is hit."""

    name: str
    step_rate: float  # chance that one call of a step site fails
    s3_rate: float  # chance that one S3 request fails
    kill_interval_s: tuple[float, float] | None  # pause between session kills
    ghost_rate: float = 0.0  # chance that a task's handler also runs as a ghost
    plan_rate: float = 0.0  # chance that a saved plan vanishes or is spoiled
    s3_delay_s: tuple[float, float] = (0.05, 1.0)  # how long a held-up S3 request waits


CALM = Intensity("calm", 0.0, 0.0, None)
LIGHT = Intensity("light", 0.05, 0.01, (1.0, 3.0), ghost_rate=0.02, plan_rate=0.05)
HEAVY = Intensity("heavy", 0.15, 0.04, (0.3, 1.2), ghost_rate=0.05, plan_rate=0.15)
GHOST_DELAY_S = (0.0, 1.5)

_STAGING_EVENTS = {"PutObject": "put", "CompleteMultipartUpload": "put", "DeleteObject": "delete"}

# S3 error codes, their HTTP status and relative frequency.
_S3_ERRORS: tuple[tuple[str, int, int], ...] = (
    ("SlowDown", 503, 45),
    ("InternalError", 500, 40),
    ("AccessDenied", 403, 15),
)


class FaultPlan:
    """Decides, injects and records faults; off (``enabled = False``) until switched on."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.enabled = False
        self.intensity = CALM
        self.injected: Counter[str] = Counter()
        self.journal: list[str] = []
        # Staging/claim keys whose DeleteObject was refused before reaching the bucket.
        self.refused_deletes: set[str] = set()
        # What became of each staging key, in the order the bucket answered: "put", "delete".
        self._staging: dict[str, list[str]] = {}
        self._ghosts: list[threading.Thread] = []
        self._reached: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._clean_s3: Any = None  # set by install: plans are spoiled through it

    def _draw(self, site: str, subject: str) -> random.Random | None:
        """The random source of this call of ``site``, or None when faults are off."""
        with self._lock:
            if not self.enabled:
                return None
            n = self._reached[(site, subject)]
            self._reached[(site, subject)] += 1
        return random.Random(f"{self.seed}/{site}/{subject}/{n}")

    def record(self, kind: str, detail: str) -> None:
        with self._lock:
            self.injected[kind] += 1
            self.journal.append(f"{time.monotonic() - self._started:8.2f}s {kind} {detail}")

    # -- step faults -------------------------------------------------------------------

    def wrap_step(
        self,
        site: str,
        function: Callable[..., Any],
        subject_of: Callable[[tuple[Any, ...]], str],
        retried_before: type[IngestError],
        retried_after: type[IngestError],
    ) -> Callable[..., Any]:
        """``function``, failing at random before or after its work."""

        @functools.wraps(function)
        def faulty(*args: Any, **kwargs: Any) -> Any:
            subject = subject_of(args)
            rng = self._draw(site, subject)
            fault: tuple[Moment, bool] | None = None
            if rng is not None and rng.random() < self.intensity.step_rate:
                fault = (rng.choice(("before", "after")), rng.random() < 0.7)
            if fault is not None and fault[0] == "before":
                raise self._step_error(site, subject, fault, retried_before)
            result = function(*args, **kwargs)
            if fault is not None:
                raise self._step_error(site, subject, fault, retried_after)
            return result

        return faulty

    def _step_error(
        self, site: str, subject: str, fault: tuple[Moment, bool], retried: type[IngestError]
    ) -> Exception:
        moment, is_retried = fault
        name = retried.__name__ if is_retried else ChaosCrash.__name__
        self.record(f"step {site} {moment} {name}", subject)
        message = f"chaos: {site} killed {moment} its work"
        return retried(message, table=subject) if is_retried else ChaosCrash(message)

    # -- S3 faults ---------------------------------------------------------------------

    def faulty_s3_client(self, make: Callable[[], Any]) -> Callable[[], Any]:
        """A replacement for ``s3_client()`` whose clients fail at random."""

        def s3_client() -> Any:
            client = make()
            client.meta.events.register("before-parameter-build.s3", self._before_s3)
            client.meta.events.register("after-call.s3", self._after_s3)
            return client

        return s3_client

    def _before_s3(
        self, params: Mapping[str, Any], model: Any, context: dict[str, Any], **_: Any
    ) -> None:
        key = str(params.get("Key") or params.get("Prefix") or "")
        operation = str(model.name)
        context["chaos_request"] = (operation, key)
        rng = self._draw(f"s3 {operation}", _table_of(key))
        if rng is None or rng.random() >= self.intensity.s3_rate:
            return
        if rng.random() < 0.3:
            # Held up, as by S3 throttling and the client's retries: then carried out.
            delay = rng.uniform(*self.intensity.s3_delay_s)
            self.record(f"s3 {operation} delayed", f"{key} by {delay:.2f}s")
            time.sleep(delay)
            return
        codes, statuses, weights = zip(*_S3_ERRORS, strict=True)
        i = rng.choices(range(len(codes)), weights=weights)[0]
        moment: Moment = "before" if rng.random() < 0.6 else "after"
        fault = (operation, key, codes[i], statuses[i], moment)
        if moment == "after":
            context["chaos_fault"] = fault
            return
        if operation == "DeleteObject":
            with self._lock:
                self.refused_deletes.add(key)
        raise self._s3_error(fault)

    def _after_s3(self, http_response: Any, context: dict[str, Any], **_: Any) -> None:
        carried_out = http_response.status_code < 300
        operation, key = context.get("chaos_request", ("", ""))
        event = _STAGING_EVENTS.get(operation)
        if carried_out and event and key.startswith(STAGING_PREFIX):
            with self._lock:
                self._staging.setdefault(key, []).append(event)
        fault = context.pop("chaos_fault", None)
        # Only a request the bucket carried out can lose its response.
        if fault is not None and carried_out:
            raise self._s3_error(fault)

    def restaged(self) -> set[str]:
        """Staging keys written again after they were deleted: a late upload (a ghost, a
        slow or overlapping execution) that no commit of its own followed."""
        with self._lock:
            return {
                key
                for key, events in self._staging.items()
                if events[-1] == "put" and "delete" in events
            }

    def _s3_error(self, fault: tuple[str, str, str, int, Moment]) -> ClientError:
        operation, key, code, status, moment = fault
        self.record(f"s3 {operation} {moment} {code}", key)
        return ClientError(
            {
                "Error": {"Code": code, "Message": f"chaos: {code}"},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            operation,
        )

    # -- plan faults -------------------------------------------------------------------

    def spoiling(
        self, site: str, function: Callable[..., Any], plan_of: Callable[..., Any]
    ) -> Callable[..., Any]:
        """``function``, whose plan (``plan_of(args, result)``: its payload, with the plan's
        bucket and key) vanishes or is spoiled at random: after the call when ``plan_of``
        reads the result, else before it."""

        @functools.wraps(function)
        def spoiled(*args: Any, **kwargs: Any) -> Any:
            before = plan_of(args, None)
            if before is not None:
                self._spoil(site, before)
            result = function(*args, **kwargs)
            after = plan_of(args, result)
            if before is None and after is not None:
                self._spoil(site, after)
            return result

        return spoiled

    def _spoil(self, site: str, payload: Mapping[str, Any]) -> None:
        plan = payload.get("plan")
        if not isinstance(plan, Mapping) or self._clean_s3 is None:
            return
        rng = self._draw(f"plan {site}", str(payload.get("table", "run")))
        if rng is None or rng.random() >= self.intensity.plan_rate:
            return
        bucket, key = plan["bucket"], plan["key"]
        s3 = self._clean_s3
        how = rng.choice(_SPOILS)
        try:
            if how == "vanished":
                s3.delete_object(Bucket=bucket, Key=key)
            else:
                items = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                s3.put_object(Bucket=bucket, Key=key, Body=_spoiled(how, items, rng))
        except (ClientError, ValueError) as e:  # already gone (a retry, an overlap)
            self.record(f"plan {site} {how} failed", f"{key}: {e}")
            return
        self.record(f"plan {site} {how}", key)

    # -- ghost invocations -------------------------------------------------------------

    def haunted(self, invoke: Callable[..., tuple[Any, Any]]) -> Callable[..., tuple[Any, Any]]:
        """A replacement for the runner's ``invoke_handler`` that sometimes adds a ghost."""

        def invoke_handler(spec: Any, arn: str, event: Any) -> tuple[Any, Any]:
            subject = str(event.get("table", "run")) if isinstance(event, Mapping) else "run"
            rng = self._draw(f"ghost {spec.logical_id}", subject)
            if rng is not None and rng.random() < self.intensity.ghost_rate:
                delay = rng.uniform(*GHOST_DELAY_S)
                self.record(f"ghost {spec.logical_id}", f"{subject} after {delay:.2f}s")
                ghost = threading.Thread(
                    target=self._haunt,
                    args=(invoke, spec, arn, copy.deepcopy(event), delay),
                    name=f"chaos-ghost-{spec.logical_id}",
                    daemon=True,
                )
                with self._lock:
                    self._ghosts.append(ghost)
                ghost.start()
            return invoke(spec, arn, event)

        return invoke_handler

    def _haunt(
        self, invoke: Callable[..., tuple[Any, Any]], spec: Any, arn: str, event: Any, delay: float
    ) -> None:
        time.sleep(delay)
        invoke(spec, arn, event)

    def join_ghosts(self, timeout_s: float = 120.0) -> None:
        """Wait for every ghost (they use the deployment, so before closing it)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            ghosts = list(self._ghosts)
        for ghost in ghosts:
            ghost.join(max(0.0, deadline - time.monotonic()))
        if any(ghost.is_alive() for ghost in ghosts):
            raise RuntimeError("ghost invocations did not finish")

    def install(self, monkeypatch: pytest.MonkeyPatch, *, sub_windows: bool = True) -> None:
        """Put the faulty steps and S3 clients in place (inert while ``enabled`` is off).

        Without ``sub_windows`` (whole windows), the steps of sub-windows get no faults of
        their own (planning inside QueryToParquet, CommitWindows, a reused window's check):
        the whole-window chaos keeps the fault rate per step its sensitivity was measured at.
        """

        def table_arg(args: tuple[Any, ...]) -> str:
            return str(args[1])  # Lake methods: (self, table, ...)

        def window_table(args: tuple[Any, ...]) -> str:
            return str(args[1].table)  # Lake methods: (self, window)

        def payload_table(args: tuple[Any, ...]) -> str:
            payload = args[0] if args else None
            return str(payload.get("table", "run")) if isinstance(payload, Mapping) else "run"

        def sub_window(args: tuple[Any, ...]) -> str:
            # A sub-window of a plan (a StageWindow child) is a subject of its own.
            payload = args[0] if args else None
            if isinstance(payload, Mapping) and PLAN_INDEX in payload:
                return f"{payload_table(args)}#{payload[PLAN_INDEX]}"
            return payload_table(args)

        steps: list[
            tuple[Any, str, Callable[[tuple[Any, ...]], str], type[IngestError], type[IngestError]]
        ] = [
            (pipeline, "start_run", payload_table, SourceUnavailable, SourceUnavailable),
            (pipeline, "find_watermark", payload_table, LakeUnavailable, LakeUnavailable),
            (pipeline, "stage_table", sub_window, SourceUnavailable, LakeUnavailable),
            (pipeline, "plan_windows", payload_table, SourceUnavailable, SourceUnavailable),
            (pipeline, "commit_windows", payload_table, LakeUnavailable, LakeUnavailable),
            (Lake, "commit", table_arg, LakeUnavailable, LakeUnavailable),
            (Lake, "_finish", table_arg, LakeUnavailable, LakeUnavailable),
            (Lake, "verify_staged", window_table, LakeUnavailable, LakeUnavailable),
        ]
        planning = {"plan_windows", "commit_windows", "verify_staged"}
        for owner, name, subject_of, before, after in steps:
            if not sub_windows and name in planning:
                continue
            original = getattr(owner, name)
            monkeypatch.setattr(
                owner, name, self.wrap_step(name, original, subject_of, before, after)
            )
        # Plans spoiled once written (QueryToParquet's output names it), or just before
        # CommitWindows reads one (its input names it); on a client faults never touch.
        self._clean_s3 = aws.s3_client()
        monkeypatch.setattr(
            pipeline,
            "save_plan",
            self.spoiling("saved", pipeline.save_plan, lambda args, result: result),
        )
        monkeypatch.setattr(
            pipeline,
            "commit_windows",
            self.spoiling(
                "read", pipeline.commit_windows, lambda args, result: None if result else args[0]
            ),
        )
        monkeypatch.setattr(runner, "invoke_handler", self.haunted(runner.invoke_handler))
        faulty_client = self.faulty_s3_client(aws.s3_client)
        for module in (aws, get_last_ingest_time, query_to_parquet, commit_table):
            monkeypatch.setattr(module, "s3_client", faulty_client)


# How a plan is spoiled: each but the last is refused by CommitWindows (or the Map cannot
# read it); a plan that lost its last items is a shorter chain, committed as such.
_SPOILS = ("vanished", "not JSON", "swapped", "another run's", "gap", "truncated")


def _spoiled(how: str, items: list[Any], rng: random.Random) -> bytes:
    items = copy.deepcopy(items)
    n = len(items)
    if how == "not JSON":
        return json.dumps(items).encode()[: rng.randrange(1, 40)]
    if how == "swapped" and n > 1:
        i = rng.randrange(n - 1)
        items[i], items[i + 1] = items[i + 1], items[i]
    elif how == "another run's":
        for item in items:
            item["run_id"] = "run-" + "f" * 32
    elif how == "gap" and n > 2:
        del items[rng.randrange(1, n - 1)]
        for i, item in enumerate(items):
            item[PLAN_INDEX] = i
    elif how == "truncated" and n > 1:
        del items[rng.randrange(1, n) :]
    return json.dumps(items).encode()


def _table_of(key: str) -> str:
    for prefix in (STAGING_PREFIX, CLAIMS_PREFIX):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key.split("/", 1)[0]


class SessionKiller:
    """A thread that terminates the pipeline's database sessions now and then."""

    def __init__(
        self, settings: Mapping[str, Any], plan: FaultPlan, spare: set[int] | None = None
    ) -> None:
        self.settings = dict(settings)
        self.plan = plan
        # Backends never to kill: writers that use the ingest's application_name.
        self.spare = spare if spare is not None else set()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-session-killer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError("the session killer did not stop")
        if self.error is not None:
            raise RuntimeError("the session killer failed") from self.error

    def stop_quietly(self, timeout_s: float = 10.0) -> None:
        """Stop and wait, reporting nothing (cleanup after a failure)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        rng = random.Random(f"{self.plan.seed}/session-killer")
        try:
            conn = connect(self.settings)
        except BaseException as e:
            self.error = e
            return
        try:
            while True:
                interval = self.plan.intensity.kill_interval_s
                pause = rng.uniform(*interval) if interval else 0.25
                if self._stop.wait(pause):
                    return
                if self.plan.enabled and self.plan.intensity.kill_interval_s is not None:
                    self._kill(conn, rng)
        except BaseException as e:
            self.error = e
        finally:
            conn.close()

    def _kill(self, conn: pg8000.native.Connection, rng: random.Random) -> None:
        sessions = [
            row[0]
            for row in conn.run(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = :app AND pid <> pg_backend_pid() ORDER BY pid",
                app=APPLICATION_NAME,
            )
        ]
        sessions = [pid for pid in sessions if pid not in self.spare]
        if not sessions:
            return
        victims = sessions if rng.random() < 0.2 else [rng.choice(sessions)]
        for pid in victims:
            ((killed,),) = conn.run("SELECT pg_terminate_backend(:pid)", pid=pid)
            if killed:
                self.plan.record("db terminate session", f"pid {pid}")
