"""The engine window: micro-batches requests in front of an engine and isolates failing items.

A `SelfBatching` engine (its server batches by itself: `openai`) gets one request per call,
dispatched at once within the engine's call limit: no request waits for batch-mates.
Every request resolves with a `WindowResult`, never an exception. A hung call cannot be
cancelled: its items time out, its late result is dropped, and it keeps its slot until it
returns, so at most `concurrency` calls ever run (`hung_calls` counts the hung ones).
Done-callbacks run on window threads. For metrics and readiness: `on_call` (each call's size as
it starts), `on_batch` (each finished call with its items' tags, for a batch span's links),
`busy_seconds`, `answered` and `answers`.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from moderator.engine.answers import AnswerClock
from moderator.engine.base import Engine, EngineRequest, EngineResult
from moderator.engine.window_engines import SelfBatching, WaitsOut
from moderator.errors import ErrorCode

CLOSED_MESSAGE = "engine window closed"


@dataclass(frozen=True)
class WindowResult:
    """What a submitted request resolves to."""

    result: EngineResult
    queue_ms: float  # submit -> start of the first engine call that included the item
    infer_ms: float  # time inside engine.classify for the call that produced the result
    attempts: int  # engine calls that included the item


@dataclass(frozen=True)
class BatchCall:
    """One finished engine call, for `on_batch`: its items' tags in batch order, its wall-clock
    start and end (ns since the epoch) and, when the call failed as a whole, the exception's
    type name (never its message: it may quote inputs)."""

    tags: tuple[object, ...]
    start_ns: int
    end_ns: int
    error: str | None


@dataclass(eq=False)
class _Item:
    request: EngineRequest
    future: Future[WindowResult]
    submitted: float
    tag: object = field(default=None)
    deadline: float = math.inf  # set when the item's first engine call is dispatched
    started: float | None = None
    attempts: int = 0
    failures: int = 0  # failed engine calls with this item alone
    claimed: bool = False  # a result has been chosen; set under the window's lock


class _WrongCount(Exception):
    """classify returned a result count that does not match its batch."""


class EngineWindow:
    """Forms batches of up to `batch_size` requests and runs up to `concurrency` at once.

    A batch is dispatched as soon as it is full, or `max_wait_ms` after its oldest request was
    submitted. A failing batch is split in halves until the failing items are alone; a single
    item is retried `retries` more times before it resolves as `engine_error`.

    Timeouts: a request resolves as `engine_timeout` when it has no result `timeout_s` after its
    first engine call was dispatched. Waiting in the queue behind a busy engine does not count
    (the ingest side's water marks bound the queue); a queued request only times out when no
    engine call at all has finished for `timeout_s` since it was submitted (a stalled engine).
    An engine that `WaitsOut` an outage gets its `grace_s` more, and no request times out
    while it waits (nor `timeout_s` after): the requests wait for the server with it.

    A SelfBatching engine ignores `batch_size`, `max_wait_ms`, `concurrency` (see above)."""

    def __init__(
        self,
        engine: Engine,
        *,
        batch_size: int,
        max_wait_ms: float,
        concurrency: int,
        timeout_s: float,
        retries: int,
        on_call: Callable[[int], None] | None = None,
        on_batch: Callable[[BatchCall], None] | None = None,
    ) -> None:
        """`on_call(n)` is called, on a worker thread, as each engine call of n items starts;
        `on_batch(call)` as each ends, before its items resolve. A hook must not raise."""
        if batch_size < 1 or concurrency < 1 or timeout_s <= 0 or retries < 0 or max_wait_ms < 0:
            raise ValueError("invalid engine window settings")
        self._self_batching = engine if isinstance(engine, SelfBatching) else None
        if self._self_batching is not None:
            batch_size, max_wait_ms = 1, 0.0
            concurrency = max(1, self._self_batching.max_calls)
        self._waits = engine if isinstance(engine, WaitsOut) else None
        self._grace = 0.0 if self._waits is None else self._waits.grace_s
        self._engine = engine
        self._batch_size = batch_size
        self._max_wait = max_wait_ms / 1000.0
        self._timeout = timeout_s
        self._retries = retries
        self._on_call = on_call
        self._on_batch = on_batch
        self._concurrency = concurrency
        self._busy = 0.0  # seconds spent in finished engine calls, all workers together
        self.answers = AnswerClock()
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()  # waiting for a batch, in submit order
        self._by_deadline: deque[_Item] = deque()  # dispatched, unexpired items, by deadline
        self._last_progress = time.monotonic()  # when an engine call last finished
        self._pending = 0
        self._free_slots = concurrency
        self._in_engine = 0  # SelfBatching: items dispatched whose engine calls are not over
        self._calls: dict[int, float] = {}  # running engine calls: id -> start time
        self._call_ids = itertools.count()
        self._closed = False
        self._work: queue.SimpleQueue[list[_Item] | None] = queue.SimpleQueue()
        # Daemon threads: a hung engine call must not keep the process alive at exit.
        self._workers = [
            threading.Thread(target=self._work_loop, name=f"engine-window-{i}", daemon=True)
            for i in range(concurrency)
        ]
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="engine-window-dispatch", daemon=True
        )
        for thread in (*self._workers, self._dispatcher):
            thread.start()

    def submit(self, request: EngineRequest, tag: object = None) -> Future[WindowResult]:
        """Queue one request; the future always resolves with a WindowResult. `tag` is opaque
        to the window: it is handed to `on_batch` with each call that includes the request."""
        future: Future[WindowResult] = Future()
        future.set_running_or_notify_cancel()  # not cancellable: it always gets a result
        now = time.monotonic()
        item = _Item(request, future, now, tag=tag)
        with self._cond:
            if not self._closed:
                self._queue.append(item)
                self._pending += 1
                # Only a new oldest item or a full batch moves the dispatcher's next wake-up.
                if len(self._queue) == 1 or len(self._queue) % self._batch_size == 0:
                    self._cond.notify()
                return future
        future.set_result(WindowResult(_error(ErrorCode.ENGINE_ERROR, CLOSED_MESSAGE), 0, 0, 0))
        return future

    @property
    def pending(self) -> int:
        """Requests submitted and not yet resolved."""
        with self._cond:
            return self._pending

    @property
    def answered(self) -> bool:
        """Whether an engine call has returned a model's answer (not only engine errors)."""
        return self.answers.answered

    @property
    def busy_seconds(self) -> float:
        """Seconds spent in engine calls since the start, running calls included."""
        now = time.monotonic()
        with self._cond:
            return self._busy + sum(now - start for start in self._calls.values())

    @property
    def concurrency(self) -> int:
        """The most engine calls that may run at once now: `concurrency`, or for a
        SelfBatching engine its current call limit (one item per call), so that busy
        time over this is the share of the engine's capacity in use."""
        engine = self._self_batching
        return self._concurrency if engine is None else engine.call_limit

    @property
    def hung_calls(self) -> int:
        """Calls past timeout_s (each holds a slot); none within timeout_s of an outage wait."""
        with self._cond:
            now = time.monotonic()
            late = now - self._timeout if self._held_until() < now else -math.inf
            return sum(start < late for start in self._calls.values())

    def close(self, timeout: float = 5.0) -> None:
        """Stop dispatching; queued requests, and those still running after `timeout` (at once
        while the engine waits out an outage: only its close ends that wait), resolve as
        engine_error "engine window closed". The engine itself is not closed."""
        waits = self._waits is not None and self._waits.waiting_out()
        until = time.monotonic() + (0.0 if waits else timeout)
        with self._cond:
            if self._closed:
                return
            self._closed = True
            queued = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        self._fail(queued, ErrorCode.ENGINE_ERROR, CLOSED_MESSAGE)
        self._dispatcher.join(max(0.0, until - time.monotonic()))
        for _ in self._workers:
            self._work.put(None)
        for thread in self._workers:
            thread.join(max(0.0, until - time.monotonic()))
        with self._cond:
            rest = list(self._by_deadline)
            self._by_deadline.clear()
        self._fail(rest, ErrorCode.ENGINE_ERROR, CLOSED_MESSAGE)

    def _dispatch_loop(self) -> None:
        closed = False
        while not closed:
            with self._cond:
                while True:
                    now = time.monotonic()
                    expired = self._take_expired(now)
                    batch = [] if self._closed else self._take_batch(now)
                    closed = self._closed
                    if expired or batch or closed:
                        break
                    self._cond.wait(self._wait_time(now))
            self._fail(expired, ErrorCode.ENGINE_TIMEOUT, f"no result within {self._timeout:g}s")
            if batch:
                self._work.put(batch)

    def _take_expired(self, now: float) -> list[_Item]:
        expired: list[_Item] = []
        held = self._held_until()
        while self._by_deadline and (
            self._by_deadline[0].claimed or max(self._by_deadline[0].deadline, held) <= now
        ):
            item = self._by_deadline.popleft()
            if not item.claimed:
                expired.append(item)
        while self._queue and (self._queue[0].claimed or self._stalled(self._queue[0], now)):
            item = self._queue.popleft()
            if not item.claimed:
                expired.append(item)
        return expired

    def _stalled(self, item: _Item, now: float) -> bool:
        """No engine call has finished for timeout_s since this queued item was submitted."""
        return self._stalls_at(item) <= now

    def _stalls_at(self, item: _Item) -> float:
        since = max(item.submitted, self._last_progress)
        return max(since + self._timeout + self._grace, self._held_until())

    def _held_until(self) -> float:
        """No item times out before this: timeout_s after the engine last waited out an outage
        (-inf for an engine that never does)."""
        return -math.inf if self._waits is None else self._waits.waited_at() + self._timeout

    def _can_dispatch(self) -> bool:
        """A worker is free and, for a SelfBatching engine, its call limit has room (the
        limit only moves as a call ends, and every end wakes the dispatcher)."""
        if self._free_slots == 0:
            return False
        engine = self._self_batching
        return engine is None or self._in_engine < engine.call_limit

    def _take_batch(self, now: float) -> list[_Item]:
        if not self._can_dispatch():
            return []
        while self._queue and self._queue[0].claimed:
            self._queue.popleft()
        if not self._queue:
            return []
        if len(self._queue) < self._batch_size and now < self._queue[0].submitted + self._max_wait:
            return []
        batch: list[_Item] = []
        while self._queue and len(batch) < self._batch_size:
            item = self._queue.popleft()
            if not item.claimed:
                item.deadline = now + self._timeout + self._grace
                self._by_deadline.append(item)
                batch.append(item)
        self._free_slots -= 1
        if self._self_batching is not None:
            self._in_engine += 1
        return batch

    def _wait_time(self, now: float) -> float | None:
        held = self._held_until()
        wake = [max(self._by_deadline[0].deadline, held)] if self._by_deadline else []
        if self._queue:
            wake.append(self._stalls_at(self._queue[0]))
        if self._queue and self._can_dispatch():
            wake.append(self._queue[0].submitted + self._max_wait)
        return max(0.0, min(wake) - now) if wake else None

    def _work_loop(self) -> None:
        while (batch := self._work.get()) is not None:
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._free_slots += 1
                    self._cond.notify()

    def _run(self, batch: list[_Item]) -> None:
        held = self._self_batching is not None  # a place under the engine's call limit
        todo = [batch]
        try:
            while todo:
                with self._cond:
                    group = [item for item in todo.pop() if not item.claimed]
                if not group:
                    continue
                outcome, infer_ms = self._call(group)
                if not isinstance(outcome, Exception):
                    held = self._leave_engine(held)
                    self._resolve(list(zip(group, outcome, strict=True)), infer_ms)
                elif len(group) > 1:
                    middle = len(group) // 2
                    todo += [group[middle:], group[:middle]]
                else:
                    group[0].failures += 1
                    if group[0].failures <= self._retries:
                        todo.append(group)
                    else:
                        held = self._leave_engine(held)
                        failed = _error(ErrorCode.ENGINE_ERROR, _describe(outcome))
                        self._resolve([(group[0], failed)], infer_ms)
        finally:
            self._leave_engine(held)

    def _leave_engine(self, held: bool) -> bool:
        """The item's engine calls are over: its place under a SelfBatching engine's call
        limit frees up before its done-callbacks run (they assemble and publish a verdict, no
        engine work), so the next item goes in at once. Returns False: nothing is held."""
        if held:
            with self._cond:
                self._in_engine -= 1
                self._cond.notify()
        return False

    def _call(self, group: list[_Item]) -> tuple[list[EngineResult] | Exception, float]:
        start = time.monotonic()
        start_ns = time.time_ns()
        with self._cond:
            call_id = next(self._call_ids)
            self._calls[call_id] = start
            for item in group:
                item.attempts += 1
                item.started = start if item.started is None else item.started
        if self._on_call is not None:
            self._on_call(len(group))
        outcome: list[EngineResult] | Exception
        try:
            outcome = self._engine.classify([item.request for item in group])
            if len(outcome) != len(group):
                raise _WrongCount(f"engine returned {len(outcome)} results for {len(group)}")
        except Exception as exc:  # any engine failure is isolated, never propagated
            outcome = exc
        finally:
            with self._cond:
                del self._calls[call_id]
                self._last_progress = time.monotonic()
                self._busy += self._last_progress - start
        self.answers.record(outcome)
        if self._on_batch is not None:
            error = type(outcome).__name__ if isinstance(outcome, Exception) else None
            tags = tuple(item.tag for item in group)
            self._on_batch(BatchCall(tags, start_ns, time.time_ns(), error))
        return outcome, (time.monotonic() - start) * 1000.0

    def _fail(self, items: list[_Item], code: ErrorCode, message: str) -> None:
        self._resolve([(item, _error(code, message)) for item in items], None)

    def _resolve(self, pairs: list[tuple[_Item, EngineResult]], infer_ms: float | None) -> None:
        """The one place a result is chosen: the first resolution wins, later ones are dropped."""
        with self._cond:
            won = [(item, result) for item, result in pairs if not item.claimed]
            for item, _ in won:
                item.claimed = True
            self._pending -= len(won)
        now = time.monotonic()
        for item, result in won:  # outside the lock: done-callbacks may submit again
            started = now if item.started is None else item.started
            spent = infer_ms if infer_ms is not None else (now - started) * 1000.0
            queue_ms = (started - item.submitted) * 1000.0
            item.future.set_result(WindowResult(result, queue_ms, spent, item.attempts))


def _error(code: ErrorCode, message: str) -> EngineResult:
    return EngineResult(error_code=code, error_message=message)


def _describe(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return (f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__)[:300]
