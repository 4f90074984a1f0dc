"""No image judged twice: the judgement key, and one engine call per key in flight.

The engine's answer depends on the image bytes, the model and, for an engine that reads the
policy, the prompt and category list it is given. `judgement_key` names exactly these, and both
the verdict cache and the in-flight table use it: an event whose key is cached is answered from
the cache; one whose key is being judged for another event waits for that engine call; only the
first of its key calls the engine. Each waiter then decides under its own tenant's policy.

The key needs only the object's bytes, so the lookup comes before the decode: a hit and a waiter
never decode. The leader's decode facts (format, size) go into the cache and to its waiters;
when its decode fails, each waiter gets the same error, since its bytes are the same.

The table holds one entry per key being judged, each with the list of events waiting on it, so
it never holds more entries than events in progress (bounded by `flow.high_in_flight`, or by a
scan's in-flight limit). Waiters keep no image: only their event and a callback.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal

import structlog
from opentelemetry.trace import SpanContext

from moderator.engine.base import EngineResult
from moderator.engine.capabilities import capabilities
from moderator.engine.window import WindowResult
from moderator.errors import ConfigError, ErrorCode
from moderator.events.verdict import ModelInfo, VerdictError
from moderator.pipeline.assemble import FrameOutcome, ObjectFacts, strictest
from moderator.pipeline.cache import CacheKey, Judged, Judgement, VerdictCache
from moderator.policy.base import CompiledPolicy

log = structlog.get_logger("moderator.pipeline")

NO_FACTS = ObjectFacts()
POLICY_NOT_READ = "-"
"""The key's middle part for an engine that does not read the policy: every policy shares it."""


def judgement_key(
    sha256: str,
    policy: CompiledPolicy,
    model_id: str,
    *,
    reads_policy: bool,
    per_tenant: bool = False,
) -> CacheKey:
    """(image sha256, model input, model id): what decides the engine's answer, and nothing else.

    The model input is a digest of the prompt and the category list an engine that reads the
    policy is given (`engine.capabilities.reads_policy`); for one that does not, a constant. The
    decision table and the allowed locations are not part of it: every event decides under its
    own policy from the shared assessments. The tenant is, prefixed to the model input, only
    when `per_tenant` (`cache.scope: tenant`): then tenants share no answer.
    """
    part = (
        _model_input(policy.prompt_sha256, policy.categories) if reads_policy else POLICY_NOT_READ
    )
    return (sha256, f"{policy.tenant_id}/{part}" if per_tenant else part, model_id)


@functools.lru_cache(maxsize=1024)
def _model_input(prompt_sha256: str, categories: tuple[str, ...]) -> str:
    # Cached: every key of one policy shares the same string object (less memory per entry).
    text = "\n".join((prompt_sha256, *categories))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Answer:
    """What the event that called the engine hands to the events waiting on the same key: its
    window results, one per frame, its event span (a waiter's trace links to it) and the facts
    its decode found; or, when the image could not be judged before the engine (a decode
    error), that `error` and no results."""

    results: tuple[WindowResult, ...]
    leader: SpanContext | None
    facts: ObjectFacts = NO_FACTS
    error: VerdictError | None = None


Waiter = Callable[[Answer], None]


@dataclass(frozen=True)
class Claim:
    """The outcome of `Coalescer.claim`.

    `hit`: `judged` holds the cached assessments and facts. `lead`: the caller decodes, calls
    the engine and must end the flight with `settle`, `fail` or `abandon`. `wait`: the waiter
    given to `claim` will be called with the leader's answer, on the thread that ends it.
    """

    kind: Literal["hit", "lead", "wait"]
    judged: Judged | None = None


LEAD = Claim("lead")
WAIT = Claim("wait")


class Coalescer:
    """The verdict cache, and the table of keys being judged in front of it.

    A lookup and the join of a flight happen under one lock, and so do the cache write and the
    end of a flight: an event either finds the cached answer, joins the flight, or starts one;
    it can never miss both and call the engine a second time.
    """

    def __init__(
        self, cache: VerdictCache, model: ModelInfo, reads_policy: bool | None = None
    ) -> None:
        """`reads_policy`: whether the engine's answer depends on the policy prompt; None reads
        it from the capabilities declared by the engine kind `model.engine` (`reads_prompt`)."""
        self._cache = cache
        self._model_id = f"{model.engine}:{model.name}@{model.revision or ''}"
        self.reads_policy = reads_policy if reads_policy is not None else reads_prompt(model)
        self._flights: dict[CacheKey, list[Waiter]] = {}
        self._lock = threading.Lock()
        self.coalesced = 0  # events that waited on another event's engine call

    def key(self, sha256: str, policy: CompiledPolicy) -> CacheKey:
        """The judgement key of an image (its sha256) under `policy`, for this engine."""
        return judgement_key(
            sha256,
            policy,
            self._model_id,
            reads_policy=self.reads_policy,
            per_tenant=self._cache.per_tenant,
        )

    def claim(self, key: CacheKey, waiter: Waiter) -> Claim:
        """Look `key` up: cached, being judged (then `waiter` is queued) or new."""
        with self._lock:
            judged = self._cache.get(key)
            if judged is not None:
                return Claim("hit", judged)
            waiting = self._flights.get(key)
            if waiting is not None:
                waiting.append(waiter)
                self.coalesced += 1
                return WAIT
            self._flights[key] = []
            return LEAD

    def settle(
        self, key: CacheKey, results: Sequence[WindowResult], facts: ObjectFacts = NO_FACTS
    ) -> list[Waiter]:
        """End the flight of `key` with the leader's results: cache them with the image's
        `facts` when every frame has an assessment (errors are never cached), and return the
        waiters for the caller to call with the answer. Later events find the cache, or start
        a new flight."""
        frames = cacheable(results)
        with self._lock:
            try:
                if frames is not None:
                    self._cache.put(key, Judged(frames, dataclasses.replace(facts, etag=None)))
            finally:
                waiters = self._flights.pop(key, [])
        return waiters

    def fail(self, key: CacheKey, error: VerdictError, facts: ObjectFacts) -> None:
        """The leader's image failed before the engine (a decode error): each waiter, holding
        the same bytes, gets the same error. Nothing is cached."""
        wake(self.settle(key, []), Answer((), None, facts, error))

    def abandon(self, key: CacheKey) -> None:
        """The leader could not submit its frames: each waiter gets an `engine_error` verdict."""
        message = "internal error: the event judging this image failed"
        result = EngineResult(error_code=ErrorCode.ENGINE_ERROR, error_message=message)
        failed = WindowResult(result, 0.0, 0.0, 0)
        wake(self.settle(key, [failed]), Answer((failed,), None))

    @property
    def in_flight(self) -> int:
        """Keys being judged now."""
        with self._lock:
            return len(self._flights)


def cacheable(results: Sequence[WindowResult]) -> Judgement | None:
    """Each frame's assessment, or None when any frame has none (an engine error)."""
    frames = tuple(r.result.assessment for r in results)
    if not frames or any(a is None for a in frames):
        return None
    return tuple(a for a in frames if a is not None)


def wake(waiters: Sequence[Waiter], answer: Answer) -> None:
    """Call each waiter with `answer`; one that raises does not keep the others from theirs."""
    for waiter in waiters:
        try:
            waiter(answer)
        except Exception:
            log.exception("coalesced_waiter_failed")


def decide_frames(policy: CompiledPolicy, results: Sequence[WindowResult]) -> FrameOutcome:
    """An image's window results (one per frame) decided under `policy`: the strictest frame."""
    return strictest([_frame_outcome(policy, wr) for wr in results])


def decide_cached(policy: CompiledPolicy, frames: Judgement) -> FrameOutcome:
    """Cached assessments (one per frame) decided under `policy`: the strictest frame."""
    return strictest([FrameOutcome(policy.decide(a), assessment=a) for a in frames])


def _frame_outcome(policy: CompiledPolicy, wr: WindowResult) -> FrameOutcome:
    res = wr.result
    if res.error_code is not None or res.assessment is None:
        code = res.error_code or ErrorCode.ENGINE_ERROR
        return FrameOutcome(
            decision=policy.on_error(code),
            error=VerdictError(code=code, message=res.error_message[:500]),
            raw_output=res.raw_output,
            generation=res.generation,
            attempts=wr.attempts,
        )
    return FrameOutcome(
        decision=policy.decide(res.assessment),
        assessment=res.assessment,
        raw_output=res.raw_output,
        generation=res.generation,
        attempts=wr.attempts,
    )


def reads_prompt(model: ModelInfo) -> bool:
    """Whether `model.engine`'s answers depend on the policy prompt, from the capabilities its
    kind declares; an engine that is no kind of this package is taken to read it."""
    try:
        return capabilities(model.engine).reads_policy
    except ConfigError:
        return True


def gather(
    futures: Sequence[Future[WindowResult]], then: Callable[[list[WindowResult]], None]
) -> None:
    """Call `then` with the futures' results, in their order, once all are in."""
    collected = _Gather(len(futures), then)
    for index, future in enumerate(futures):
        future.add_done_callback(functools.partial(collected.put, index))


class _Gather:
    """Collects the window results of one event's frames; calls back once all are in."""

    def __init__(self, n: int, then: Callable[[list[WindowResult]], None]) -> None:
        self._results: list[WindowResult | None] = [None] * n
        self._left = n
        self._lock = threading.Lock()
        self._then = then

    def put(self, index: int, fut: Future[WindowResult]) -> None:
        with self._lock:
            self._results[index] = fut.result()
            self._left -= 1
            last = self._left == 0
        if last:
            self._then([r for r in self._results if r is not None])
