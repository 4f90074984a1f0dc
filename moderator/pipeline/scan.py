"""The scan runner: objects from a scan source through the Processor, one verdict line each.

Objects are submitted to the same Processor `run` uses, with a bounded number in flight; each
verdict is written as one JSON line the moment it completes. `moderator scan` drives it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, TextIO

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from moderator.emit.records import OutRecord, trace_from_headers
from moderator.engine.base import Engine, declared_capabilities
from moderator.errors import ErrorCode, ModeratorError
from moderator.events.upload import ObjectRef, UploadEvent
from moderator.events.verdict import Assessment, Decision, InputCoords
from moderator.pipeline.job import Job
from moderator.pipeline.process import Processor
from moderator.pipeline.progress import Counts, Progress, Tally
from moderator.pipeline.scan_output import VerdictLines
from moderator.pipeline.scan_sources import Item
from moderator.policy.base import CompiledPolicy, PolicyProvider
from moderator.policy.reach import Shortfall, shortfall
from moderator.policy.registry import SURFACE_DEFAULT, PolicyRegistry
from moderator.settings import Settings

SCAN_TOPIC = "scan"  # InputCoords.topic of scanned objects (audit provenance only)


def max_in_flight(settings: Settings) -> int:
    """Events submitted and not yet decided: enough to keep every engine batch and fetch busy."""
    engine = settings.engine
    return 2 * engine.batch_size * engine.concurrency + settings.fetch.concurrency


# -- tenant policy, minus tenant isolation -------------------------------------------------------


class OperatorPolicy:
    """A tenant's compiled policy for objects the operator named on the command line: these are
    in scope whatever the tenant's allowed buckets and prefixes say. All else is the tenant's."""

    def __init__(self, inner: CompiledPolicy) -> None:
        self._inner = inner

    @property
    def tenant_id(self) -> str:
        return self._inner.tenant_id

    @property
    def surface(self) -> str:
        return self._inner.surface

    @property
    def version(self) -> str:
        return self._inner.version

    @property
    def full_hash(self) -> str:
        return self._inner.full_hash

    @property
    def prompt(self) -> str:
        return self._inner.prompt

    @property
    def prompt_sha256(self) -> str:
        return self._inner.prompt_sha256

    def document(self) -> dict[str, Any]:
        return self._inner.document()

    @property
    def categories(self) -> tuple[str, ...]:
        return self._inner.categories

    def allows_object(self, bucket: str, key: str) -> bool:
        return True

    def decide(self, assessment: Assessment) -> Decision:
        return self._inner.decide(assessment)

    def on_error(self, code: ErrorCode) -> Decision:
        return self._inner.on_error(code)


class OperatorPolicies:
    """Wraps every policy of `inner` in OperatorPolicy."""

    def __init__(self, inner: PolicyProvider) -> None:
        self._inner = inner

    def resolve(self, tenant_id: str, surface: str) -> CompiledPolicy | None:
        policy = self._inner.resolve(tenant_id, surface)
        return OperatorPolicy(policy) if policy is not None else None

    def fallback(self, tenant_id: str, surface: str) -> CompiledPolicy:
        return OperatorPolicy(self._inner.fallback(tenant_id, surface))

    def unknown_reason(self, tenant_id: str) -> str:
        return self._inner.unknown_reason(tenant_id)


def engine_shortfall(policies: PolicyRegistry, tenant_id: str, engine: Engine) -> Shortfall | None:
    """What the tenant's policy for scanned objects (no surface: its default one) acts on that
    the engine can never raise (moderator/policy/reach.py); None when nothing."""
    declared = declared_capabilities(engine)
    policy = policies.resolve(tenant_id, SURFACE_DEFAULT)
    if declared is None or policy is None:
        return None
    return shortfall(tenant_id, engine.info.engine, [policy.resolved], declared)


# -- running -------------------------------------------------------------------------------------


class Scan:
    """Submits items with at most `max_in_flight` undecided; writes verdict lines as they come,
    in `output_format` (scan_output.FORMATS), and tallies them by decision and error code."""

    def __init__(
        self,
        processor: Processor,
        out: TextIO,
        *,
        tenant_id: str,
        local: bool,
        verdicts_topic: str,
        max_in_flight: int,
        output_format: str = "jsonl",
    ) -> None:
        self._processor = processor
        self._out = out
        self._lines = VerdictLines(output_format)
        self._decisions: Counter[str] = Counter()
        self._error_codes: Counter[str] = Counter()
        self._tenant = tenant_id
        self._local = local
        self._topic = verdicts_topic
        self._slots = threading.Semaphore(max_in_flight)
        self._cond = threading.Condition()
        self._total = self._submitted = self._finished = 0
        self._done = self._errors = 0
        self.skipped = 0
        self.fatal: str | None = None
        self.output_closed = False  # the reader went away (`moderator scan DIR | head -1`)
        self._stopped = False  # interrupted: no more lines (Ctrl-C)

    def counts(self) -> Counts:
        with self._cond:
            return Counts(self._total, self._done, self._errors, self.skipped)

    def tally(self) -> Tally:
        """Verdicts written so far, by decision and by error code."""
        with self._cond:
            return Tally(dict(self._decisions), dict(self._error_codes))

    def run(self, items: Iterator[Item], progress: Progress) -> None:
        """Submit every item (until a fatal error), then wait for all submitted to finish."""
        header = self._lines.header()
        try:
            if header:
                self._out.write(header)
                self._out.flush()
        except Exception as exc:  # a closed pipe, a full disk: as for a verdict line
            self._output_failed(exc)
            progress.finish(self.counts(), self.tally())
            return
        try:
            self._submit_all(items, progress)
            while True:
                with self._cond:
                    if self._finished >= self._submitted:
                        break
                    self._cond.wait(progress.every_s)
                progress.tick(self.counts(), listing=False)
        except KeyboardInterrupt:
            self._stop_writing()  # the summary and the count of lines kept are then final
            raise
        finally:
            progress.finish(self.counts(), self.tally())

    def _submit_all(self, items: Iterator[Item], progress: Progress) -> None:
        try:
            for index, item in enumerate(items):
                with self._cond:
                    if self.fatal is not None:
                        break
                    self._total += 1
                job = self._job(item, index, progress)
                if job is None:
                    continue
                while not self._slots.acquire(timeout=progress.every_s):
                    progress.tick(self.counts(), listing=True)
                with self._cond:
                    self._submitted += 1
                self._processor.submit(job, functools.partial(self._on_done, item))
                progress.tick(self.counts(), listing=True)
        except (OSError, BotoCoreError, ClientError) as exc:
            with self._cond:
                self.fatal = self.fatal or f"listing failed: {exc}"

    def _stop_writing(self) -> None:
        """No verdict line is written after this (verdicts still in flight are dropped)."""
        with self._cond:
            self._stopped = True

    def _job(self, item: Item, index: int, progress: Progress) -> Job | None:
        if item.problem is not None:  # a folder or file the listing could not read
            progress.note(f"scan: skipped {item.key!r}: {item.problem}")
            with self._cond:
                self.skipped += 1
            return None
        shown_bucket = "" if self._local else item.bucket
        try:
            digest = hashlib.sha256(f"{shown_bucket}/{item.key}".encode()).hexdigest()
            event_id = "scan-" + digest[:24]
            event = UploadEvent(
                event_id=event_id,
                tenant_id=self._tenant,
                object=ObjectRef(bucket=item.bucket, key=item.key, size=item.size),
            )
        except (UnicodeEncodeError, ValidationError) as exc:
            reason = "not valid UTF-8" if isinstance(exc, UnicodeEncodeError) else "unusable key"
            progress.note(f"scan: skipped {item.key!r}: {reason}")
            with self._cond:
                self.skipped += 1
            return None
        return Job(
            event=event,
            coords=InputCoords(topic=SCAN_TOPIC, partition=0, offset=index),
            trace=trace_from_headers(None, event_id),
            received=time.monotonic(),
        )

    def _on_done(self, item: Item, records: list[OutRecord]) -> None:
        """Called once per job from a worker thread."""
        try:
            self._write(item, records)
        finally:
            with self._cond:
                self._finished += 1
                self._cond.notify_all()
            self._slots.release()

    def _write(self, item: Item, records: list[OutRecord]) -> None:
        try:
            doc = self._verdict(records)
            line = self._lines.line(doc)
        except Exception as exc:  # this object's verdict cannot be written: stop, exit 1
            with self._cond:
                self.fatal = self.fatal or f"{item.key}: {type(exc).__name__}: {exc}"
            return
        error = doc.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        with self._cond:
            if self.fatal is not None or self._stopped:
                return
            try:
                self._out.write(line)
                self._out.flush()
            except Exception as exc:  # a closed pipe, a full disk: the output's fault
                self._output_failed(exc)
                return
            self._done += 1
            self._errors += int(error is not None)
            self._decisions[str(doc.get("decision"))] += 1
            if error is not None:
                self._error_codes[str(code)] += 1

    def _output_failed(self, exc: Exception) -> None:
        """Stop the scan for a failed write; the first failure is the one reported."""
        if self.fatal is not None:
            return
        if isinstance(exc, BrokenPipeError):
            self.output_closed = True
            self.fatal = "the output was closed before every verdict was written"
        else:
            self.fatal = f"cannot write the output: {type(exc).__name__}: {exc}"

    def _verdict(self, records: list[OutRecord]) -> dict[str, Any]:
        value = next(r.value for r in records if r.topic == self._topic)
        if value is None:
            raise ModeratorError("verdict record without a value")
        doc: dict[str, Any] = json.loads(value)
        if self._local:
            doc["object"]["bucket"] = ""
        return doc
