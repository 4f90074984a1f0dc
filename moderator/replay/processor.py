"""Replay's side of per-event processing: filter, pace, re-evaluate, mark the verdict as a replay.

It sits where the ingest loop expects the service's Processor and hands every kept event to a
real one (fetch, decode, cache, engine, decide: the same code as `moderator run`). What comes
back is rewritten: the audit record is dropped (a replay never writes the audit trail), and the
verdict goes to the replay topic with `replay` set (run id, original decision, path) and its
own CloudEvents id. With `reuse_assessments`, an event whose original assessment was made by the
same model is re-decided from that assessment under the new policy, without the engine.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from moderator.emit.records import OutRecord, replay_output
from moderator.events.verdict import Assessment, ReplayInfo, ReplayPath, Verdict
from moderator.ingest.jobs import JobDone
from moderator.pipeline.assemble import ObjectFacts
from moderator.pipeline.job import Done, Job
from moderator.pipeline.process import Processor
from moderator.replay.originals import Originals
from moderator.replay.request import EventFilter

log = structlog.get_logger("moderator.replay")

# The live verdict and audit topics inside a replay's Processor: never produced to, only
# recognised here (a replay writes to the replay topic alone).
LIVE_VERDICTS = "\x00replay-verdicts"
LIVE_AUDIT = "\x00replay-audit"


@dataclass
class ReplayStats:
    kept: int = 0
    filtered: int = 0
    paths: Counter[str] = field(default_factory=Counter)


class Pacer:
    """At most `rate` starts per second (None: unpaced), spread evenly; thread-safe."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            time.sleep(start - now)


class ReplayProcessor:
    """The ingest loop's processor for a replay run."""

    def __init__(
        self,
        inner: Processor,
        *,
        run_id: str,
        output_topic: str,
        originals: Originals,
        event_filter: EventFilter,
        rate: float | None,
        reuse_assessments: bool,
        model_id: str,
        stop: threading.Event | None = None,
        check_tenant: Callable[[str, str], None] | None = None,
    ) -> None:
        """`check_tenant(tenant, surface)` is called for each kept event before it starts (the
        run warns there about a tenant without a policy)."""
        self._inner = inner
        self._run_id = run_id
        self._topic = output_topic
        self._originals = originals
        self._filter = event_filter
        self._pacer = Pacer(rate)
        self._stop = stop if stop is not None else threading.Event()
        self._paced: queue.SimpleQueue[tuple[Job, JobDone] | None] | None = None
        if rate is not None:
            self._paced = queue.SimpleQueue()
            threading.Thread(target=self._pace, name="replay-pacer", daemon=True).start()
        self._reuse = reuse_assessments
        self._model_id = model_id
        self._check_tenant = check_tenant
        self._lock = threading.Lock()
        self.stats = ReplayStats()

    @property
    def buffered_bytes(self) -> int:
        return self._inner.buffered_bytes

    def submit(self, job: Job, done: JobDone) -> None:
        ev = job.event
        if not self._filter.keeps(ev.event_id, ev.tenant_id, job.coords.timestamp_ms):
            self.stats.filtered += 1
            done([])
            return
        self.stats.kept += 1
        if self._check_tenant is not None:
            self._check_tenant(ev.tenant_id, ev.surface)
        if self._paced is None:
            self._start(job, done)
        else:
            self._paced.put((job, done))

    def close(self) -> None:
        """Stop the pacing thread (events still queued are dropped: the run is over)."""
        if self._paced is not None:
            self._paced.put(None)

    def _pace(self) -> None:
        """The pacing thread: starts queued events one by one at the rate. The loop never
        waits here, so it goes on checkpointing; what waits is bounded by its in-flight cap."""
        assert self._paced is not None
        while (item := self._paced.get()) is not None:
            if not self._stop.is_set():
                self._pacer.wait()
            if self._stop.is_set():
                # Stopping: what waits here is abandoned, not started. Its offsets stay
                # uncommitted, so a resumed run replays these events.
                item[1](None)
                continue
            self._start(*item)

    def _start(self, job: Job, done: JobDone) -> None:
        ev = job.event
        original = self._originals.get(ev.event_id)
        reused = self._reusable(original)
        if reused is not None:
            assessment, facts = reused
            rewrite = self._rewriter(original, done, reused=True)
            self._inner.submit_assessed(job, assessment, facts, rewrite)
        else:
            self._inner.submit(job, self._rewriter(original, done, reused=False))

    def _reusable(self, original: dict[str, Any] | None) -> tuple[Assessment, ObjectFacts] | None:
        """The original's assessment when it may stand in for the engine's: same model."""
        if not self._reuse or original is None or original.get("error"):
            return None
        model, raw = original.get("model") or {}, original.get("assessment")
        if raw is None or model_id(model) != self._model_id:
            return None
        try:
            assessment = Assessment.model_validate(raw)
        except ValueError:
            return None
        obj = original.get("object") or {}
        facts = ObjectFacts(
            etag=obj.get("etag"),
            sha256=obj.get("sha256"),
            format=obj.get("format"),
            width=obj.get("width"),
            height=obj.get("height"),
        )
        return assessment, facts

    def _rewriter(self, original: dict[str, Any] | None, done: JobDone, *, reused: bool) -> Done:
        decision = original.get("decision") if original else None
        original_decision = decision if decision in ("allow", "review", "block") else None

        def rewrite(records: list[OutRecord] | None) -> None:
            if records is None:  # dropped unfinished: abandoned here too
                done(None)
                return
            out = []
            for record in records:
                if record.topic != LIVE_VERDICTS or record.value is None:
                    continue
                verdict = Verdict.model_validate_json(record.value)
                path = replay_path(verdict, reused=reused)
                info = ReplayInfo(
                    run_id=self._run_id, original_decision=original_decision, path=path
                )
                replayed = verdict.model_copy(update={"replay": info})
                out.append(replay_output(record, replayed, topic=self._topic, run_id=self._run_id))
                with self._lock:
                    self.stats.paths[path] += 1
            done(out)

        return rewrite


def replay_path(verdict: Verdict, *, reused: bool) -> ReplayPath:
    """How a replayed verdict was reached."""
    if verdict.error is not None:
        return "error"
    if reused:
        return "assessment"
    return "cache" if verdict.source == "cache" else "engine"


def model_id(model: dict[str, Any]) -> str:
    return f"{model.get('engine')}:{model.get('name')}@{model.get('revision') or ''}"
