"""The coalescing test rig: the real Processor and engine window over an in-memory store, with
an engine double that holds every call until the test opens its gate, so that all copies of an
image are in flight together (tests/test_coalesce.py, tests/test_cache_before_decode.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from moderator.emit.records import OutRecord, trace_from_headers
from moderator.engine.base import EngineRequest, EngineResult
from moderator.engine.window import EngineWindow
from moderator.events.upload import ObjectRef, UploadEvent
from moderator.events.verdict import Assessment, InputCoords, ModelInfo, Verdict
from moderator.fetch.decode import DecodeLimits
from moderator.fetch.store import InMemoryObjectStore
from moderator.pipeline.cache import VerdictCache
from moderator.pipeline.job import Job, OutputTopics
from moderator.pipeline.process import Processor
from moderator.policy.bundled import write_default_policy
from moderator.policy.registry import PolicyRegistry
from moderator.service import build_policies
from tests.harness import BUCKET, settings_for

VERDICTS = "moderation.verdicts"
O4 = Assessment(rating="Unsafe", category="O4: Nudity Content", rationale="double", score=0.7)
O1 = Assessment(
    rating="Unsafe", category="O1: Hate, Humiliation, Harassment", rationale="double", score=0.7
)
# Tenant files: `art` and `strict` read different prompts (O4 allowed vs sensitive);
# `strict_photo` has the same prompt as `strict` and other thresholds (its own decisions).
TENANTS = {
    "art": "categories:\n  O4: {mode: allowed, action: allow}\n",
    "strict": "categories:\n  O4: {mode: sensitive, block_at: 0.5}\n",
    "strict_photo": "categories:\n  O4: {mode: sensitive, block_at: 0.9, review_at: 0.6}\n",
    # for animations: each allows the category the other blocks
    "hate_ok": "categories:\n  O1: {mode: allowed, action: allow}\n",
    "nudity_ok": "categories:\n  O4: {mode: allowed, action: allow}\n",
}


class GatedEngine:
    """Engine double: counts calls, images and prompts; each call waits for `gate`. Answers
    `answer(image)`, or raises when `fail` is set."""

    def __init__(
        self, kind: str = "double", answer: Callable[[Image.Image], Assessment] | None = None
    ) -> None:
        self._info = ModelInfo(engine=kind, name="double")
        self._answer = answer if answer is not None else (lambda _: O4)
        self._lock = threading.Lock()
        self.gate = threading.Event()
        self.fail = False
        self.calls = 0
        self.items = 0
        self.prompts: list[str] = []

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def input_size(self) -> int:
        return 64

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        with self._lock:
            self.calls += 1
            self.items += len(batch)
            self.prompts.extend(r.prompt for r in batch)
        if not self.gate.wait(20):
            raise TimeoutError("gate never opened")
        if self.fail:
            raise RuntimeError("engine down")
        return [EngineResult(assessment=self._answer(r.image), raw_output="{}") for r in batch]

    def close(self) -> None:
        pass


@dataclass
class Rig:
    processor: Processor
    window: EngineWindow
    engine: GatedEngine
    store: InMemoryObjectStore
    policies: PolicyRegistry
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    submitted: int = 0

    def submit(self, event_id: str, tenant: str, data: bytes | None) -> None:
        """Submit an upload of `data` (None: an object that is not in the store)."""
        key = f"{tenant}/{event_id}"
        if data is not None:
            self.store.put(BUCKET, key, data)
        event = UploadEvent(
            event_id=event_id, tenant_id=tenant, object=ObjectRef(bucket=BUCKET, key=key)
        )
        job = Job(
            event=event,
            coords=InputCoords(topic="uploads", partition=0, offset=self.submitted),
            trace=trace_from_headers(None, event_id),
            received=time.monotonic(),
        )
        self.submitted += 1
        self.processor.submit(job, self._done)

    def _done(self, records: list[OutRecord]) -> None:
        value = next(r.value for r in records if r.topic == VERDICTS)
        assert value is not None
        verdict = Verdict.model_validate_json(value)
        with self.lock:
            self.verdicts[verdict.event_id] = verdict

    def coalesced(self) -> int:
        coalescer = getattr(self.processor, "coalescer", None)  # None before coalescing existed
        return int(getattr(coalescer, "coalesced", 0))

    def release(self, expected: int) -> None:
        """Open the gate once `expected` images are in flight (at the engine or coalesced onto
        one that is), or after a few seconds: then let every verdict come."""
        until(lambda: self.engine.items + self.coalesced() >= expected, 5)
        self.engine.gate.set()
        assert until(lambda: len(self.verdicts) >= self.submitted, 20), "verdicts missing"


def until(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def policies_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    write_default_policy(directory)
    for tenant, text in TENANTS.items():
        (directory / f"{tenant}.yaml").write_text(text)
    return directory


def rig_factory(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    """The body of a `make_rig` fixture: yields a function building rigs, closes them after."""
    built: list[Rig] = []

    def make(engine: GatedEngine | None = None, per_tenant: bool = False, **extra: Any) -> Rig:
        settings = settings_for(policies_dir(tmp_path))
        engine = engine if engine is not None else GatedEngine()
        window = EngineWindow(
            engine, batch_size=8, max_wait_ms=1, concurrency=8, timeout_s=30, retries=0
        )
        store = InMemoryObjectStore()
        policies = build_policies(settings)
        processor = Processor(
            store=store,
            window=window,
            model=engine.info,
            input_size=engine.input_size,
            policies=policies,
            cache=VerdictCache(1000, per_tenant=per_tenant),
            limits=DecodeLimits.from_settings(settings.fetch),
            max_object_bytes=settings.fetch.max_object_bytes,
            concurrency=16,
            topics=OutputTopics(verdicts=VERDICTS, audit="moderation.audit", source="/test"),
            instance_id="test-0",
            **extra,
        )
        rig = Rig(processor, window, engine, store, policies)
        built.append(rig)
        return rig

    yield make
    for rig in built:
        rig.engine.gate.set()
        rig.processor.close()
        rig.window.close()
        rig.policies.close()
