"""The engine window: batching, concurrency, failure isolation, retries, timeouts, shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from moderator.engine.base import EngineRequest, EngineResult
from moderator.engine.window import CLOSED_MESSAGE, BatchCall, EngineWindow, WindowResult
from moderator.errors import ErrorCode
from moderator.events.verdict import NONE_APPLYING, Assessment, ModelInfo

WAIT = 10.0  # generous bound on anything that should happen promptly
MakeWindow = Callable[..., EngineWindow]


class EngineBoom(Exception):
    pass


class ScriptedTestEngine:
    """Test double: records batches, fails on chosen request ids, can block on a gate."""

    def __init__(
        self,
        *,
        failing: frozenset[str] = frozenset(),
        gate: threading.Event | None = None,
        barrier: threading.Barrier | None = None,
    ) -> None:
        self.failing = failing
        self.gate = gate
        self.barrier = barrier
        self.batches: list[list[str]] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(engine="test", name="scripted")

    @property
    def input_size(self) -> int:
        return 8

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        ids = [request.request_id for request in batch]
        with self._lock:
            self.batches.append(ids)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.barrier is not None:
                self.barrier.wait(timeout=WAIT)
            if self.gate is not None:
                self.gate.wait(timeout=WAIT)
            return self.answer(ids)
        finally:
            with self._lock:
                self.active -= 1

    def answer(self, ids: list[str]) -> list[EngineResult]:
        bad = sorted(set(ids) & self.failing)
        if bad:
            raise EngineBoom(f"bad image {bad[0]}\nsecond line")
        return [_safe(request_id) for request_id in ids]

    def close(self) -> None:
        pass


class FlakyTestEngine(ScriptedTestEngine):
    """Fails its first `failures` calls, then answers."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def answer(self, ids: list[str]) -> list[EngineResult]:
        if len(self.batches) <= self.failures:
            raise EngineBoom("transient")
        return super().answer(ids)


class ShortCountTestEngine(ScriptedTestEngine):
    """Returns one result too few for batches of `short_from` or more items."""

    def __init__(self, short_from: int) -> None:
        super().__init__()
        self.short_from = short_from

    def answer(self, ids: list[str]) -> list[EngineResult]:
        results = super().answer(ids)
        return results[:-1] if len(ids) >= self.short_from else results


def _safe(request_id: str) -> EngineResult:
    return EngineResult(
        assessment=Assessment(rating="Safe", category=NONE_APPLYING, rationale=request_id)
    )


def _request(i: int | str) -> EngineRequest:
    return EngineRequest(str(i), Image.new("RGB", (2, 2)), "prompt", ())


@pytest.fixture
def make_window() -> Iterator[MakeWindow]:
    windows: list[EngineWindow] = []

    def make(engine: ScriptedTestEngine, **knobs: float) -> EngineWindow:
        options: dict[str, float] = {
            "batch_size": 4,
            "max_wait_ms": 5.0,
            "concurrency": 1,
            "timeout_s": WAIT,
            "retries": 0,
        }
        options.update(knobs)
        window = EngineWindow(
            engine,
            batch_size=int(options["batch_size"]),
            max_wait_ms=options["max_wait_ms"],
            concurrency=int(options["concurrency"]),
            timeout_s=options["timeout_s"],
            retries=int(options["retries"]),
        )
        windows.append(window)
        return window

    yield make
    for window in windows:
        window.close(timeout=1.0)


def _results(futures: list[Future[WindowResult]]) -> list[WindowResult]:
    return [future.result(timeout=WAIT) for future in futures]


def _wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    until = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < until, "condition not reached"
        time.sleep(0.002)


def test_full_batch_dispatches_without_waiting(make_window: MakeWindow) -> None:
    engine = ScriptedTestEngine()
    window = make_window(engine, batch_size=4, max_wait_ms=60_000)
    started = time.monotonic()
    results = _results([window.submit(_request(i)) for i in range(8)])
    assert time.monotonic() - started < 30  # far below max_wait
    assert [len(batch) for batch in engine.batches] == [4, 4]
    assert all(r.result.assessment is not None and r.attempts == 1 for r in results)
    assert window.pending == 0


def test_batches_filled_while_the_engine_is_busy_go_out_as_it_frees(
    make_window: MakeWindow,
) -> None:
    # The dispatcher is woken for a new oldest request and for each full batch only: batches
    # that fill up while the only slot is taken must still leave as soon as it frees.
    gate = threading.Event()
    engine = ScriptedTestEngine(gate=gate)
    window = make_window(engine, batch_size=4, max_wait_ms=60_000)
    futures = [window.submit(_request(i)) for i in range(4)]
    _wait_until(lambda: engine.active == 1)
    futures += [window.submit(_request(i)) for i in range(4, 12)]
    started = time.monotonic()
    gate.set()
    assert all(r.result.assessment is not None for r in _results(futures))
    assert time.monotonic() - started < 30  # far below max_wait
    assert [len(batch) for batch in engine.batches] == [4, 4, 4]


def test_partial_batch_waits_max_wait(make_window: MakeWindow) -> None:
    engine = ScriptedTestEngine()
    window = make_window(engine, batch_size=100, max_wait_ms=80)
    started = time.monotonic()
    results = _results([window.submit(_request(i)) for i in range(3)])
    assert time.monotonic() - started >= 0.075
    assert engine.batches == [["0", "1", "2"]]
    assert results[0].queue_ms >= 75


def test_batches_overlap_up_to_concurrency(make_window: MakeWindow) -> None:
    # The barrier only opens when two classify calls are inside the engine at the same time.
    engine = ScriptedTestEngine(barrier=threading.Barrier(2))
    window = make_window(engine, batch_size=1, max_wait_ms=0, concurrency=2)
    results = _results([window.submit(_request(i)) for i in range(2)])
    assert all(r.result.assessment is not None for r in results)
    assert engine.max_active == 2


def test_concurrency_is_a_bound(make_window: MakeWindow) -> None:
    gate = threading.Event()
    engine = ScriptedTestEngine(gate=gate)
    window = make_window(engine, batch_size=1, max_wait_ms=0, concurrency=2)
    futures = [window.submit(_request(i)) for i in range(6)]
    _wait_until(lambda: engine.active == 2)
    time.sleep(0.05)  # give an over-eager dispatcher the chance to start a third call
    assert engine.active == 2
    assert window.pending == 6
    gate.set()
    assert all(r.result.assessment is not None for r in _results(futures))
    assert engine.max_active == 2


def test_failing_item_is_isolated(make_window: MakeWindow) -> None:
    engine = ScriptedTestEngine(failing=frozenset({"3"}))
    window = make_window(engine, batch_size=8, max_wait_ms=60_000, retries=2)
    results = _results([window.submit(_request(i)) for i in range(8)])
    bad = results[3]
    assert bad.result.error_code is ErrorCode.ENGINE_ERROR
    assert bad.result.error_message == "EngineBoom: bad image 3"
    assert bad.attempts == 4 + 2  # batches of 8, 4, 2, 1, then two retries alone
    for i, good in enumerate(results):
        if i != 3:
            assert good.result.assessment is not None
            assert good.result.assessment.rationale == str(i)  # results stay with their items
            assert 2 <= good.attempts <= 4
    assert engine.batches[0] == [str(i) for i in range(8)]


def test_retry_recovers_a_transient_failure(make_window: MakeWindow) -> None:
    window = make_window(FlakyTestEngine(failures=2), retries=2)
    result = window.submit(_request("x")).result(timeout=WAIT)
    assert result.result.assessment is not None
    assert result.attempts == 3


def test_retries_exhausted(make_window: MakeWindow) -> None:
    window = make_window(FlakyTestEngine(failures=5), retries=1)
    result = window.submit(_request("x")).result(timeout=WAIT)
    assert result.result.error_code is ErrorCode.ENGINE_ERROR
    assert result.result.error_message == "EngineBoom: transient"
    assert result.attempts == 2


def test_wrong_result_count_fails_the_batch(make_window: MakeWindow) -> None:
    engine = ShortCountTestEngine(short_from=2)
    window = make_window(engine, batch_size=4, max_wait_ms=60_000)
    results = _results([window.submit(_request(i)) for i in range(4)])
    assert all(r.result.assessment is not None for r in results)
    assert [len(batch) for batch in engine.batches] == [4, 2, 1, 1, 2, 1, 1]


def test_wrong_result_count_for_one_item(make_window: MakeWindow) -> None:
    window = make_window(ShortCountTestEngine(short_from=1), retries=1)
    result = window.submit(_request("x")).result(timeout=WAIT)
    assert result.result.error_code is ErrorCode.ENGINE_ERROR
    assert "0 results for 1" in result.result.error_message
    assert result.attempts == 2


def test_hung_engine_times_out(make_window: MakeWindow) -> None:
    gate = threading.Event()
    engine = ScriptedTestEngine(gate=gate)
    window = make_window(engine, batch_size=1, max_wait_ms=0, timeout_s=0.2)
    futures = [window.submit(_request(i)) for i in range(2)]  # the second waits behind the first
    results = _results(futures)
    assert [r.result.error_code for r in results] == [ErrorCode.ENGINE_TIMEOUT] * 2
    assert results[0].attempts == 1 and results[1].attempts == 0
    _wait_until(lambda: window.hung_calls == 1)
    assert window.pending == 0
    assert engine.batches == [["0"]]  # the hung call kept its slot: nothing else was started
    gate.set()
    _wait_until(lambda: window.hung_calls == 0)
    assert futures[0].result().result.error_code is ErrorCode.ENGINE_TIMEOUT  # late result dropped
    later = window.submit(_request("later")).result(timeout=WAIT)
    assert later.result.assessment is not None


class SlowTestEngine(ScriptedTestEngine):
    """Answers every call after `seconds`: busy, never stalled."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def answer(self, ids: list[str]) -> list[EngineResult]:
        time.sleep(self.seconds)
        return super().answer(ids)


def test_queue_time_behind_a_busy_engine_is_not_a_timeout(make_window: MakeWindow) -> None:
    engine = SlowTestEngine(0.1)
    window = make_window(engine, batch_size=1, max_wait_ms=0, timeout_s=0.3)
    futures = [window.submit(_request(i)) for i in range(8)]  # 0.8 s of work, 0.3 s timeout
    results = _results(futures)
    assert all(r.result.assessment is not None for r in results)
    assert results[-1].queue_ms > 300  # the last one waited longer than the timeout, and lived


def test_close_resolves_queued_and_running(make_window: MakeWindow) -> None:
    gate = threading.Event()
    engine = ScriptedTestEngine(gate=gate)
    window = make_window(engine, batch_size=1, max_wait_ms=0)
    futures = [window.submit(_request(i)) for i in range(3)]
    _wait_until(lambda: engine.active == 1)
    window.close(timeout=0.1)
    for result in _results(futures):
        assert result.result.error_code is ErrorCode.ENGINE_ERROR
        assert result.result.error_message == CLOSED_MESSAGE
    assert window.pending == 0
    after = window.submit(_request("after")).result(timeout=0)
    assert after.result.error_message == CLOSED_MESSAGE
    gate.set()


def test_close_waits_for_running_batches(make_window: MakeWindow) -> None:
    window = make_window(ScriptedTestEngine(), batch_size=2, max_wait_ms=0)
    futures = [window.submit(_request(i)) for i in range(2)]
    _wait_until(lambda: window.pending == 0)
    window.close()
    assert all(r.result.assessment is not None for r in _results(futures))


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    batch_size=st.integers(min_value=1, max_value=8),
    concurrency=st.integers(min_value=1, max_value=3),
    retries=st.integers(min_value=0, max_value=2),
    count=st.integers(min_value=0, max_value=30),
)
def test_every_future_resolves_once_and_errors_iff_failing(
    data: st.DataObject, batch_size: int, concurrency: int, retries: int, count: int
) -> None:
    failing = data.draw(st.frozensets(st.integers(min_value=0, max_value=max(count - 1, 0))))
    engine = ScriptedTestEngine(failing=frozenset(str(i) for i in failing))
    window = EngineWindow(
        engine,
        batch_size=batch_size,
        max_wait_ms=1.0,
        concurrency=concurrency,
        timeout_s=WAIT,
        retries=retries,
    )
    calls = [0] * count
    lock = threading.Lock()

    def counter(i: int) -> Callable[[Future[WindowResult]], None]:
        def done(_: Future[WindowResult]) -> None:
            with lock:
                calls[i] += 1

        return done

    try:
        futures = [window.submit(_request(i)) for i in range(count)]
        for i, future in enumerate(futures):
            future.add_done_callback(counter(i))
        results = _results(futures)
    finally:
        window.close(timeout=1.0)
    assert calls == [1] * count
    for i, result in enumerate(results):
        assert (result.result.error_code is not None) == (i in failing)
        if i in failing:
            assert result.result.error_code is ErrorCode.ENGINE_ERROR
            assert result.attempts >= retries + 1
    assert window.pending == 0


def test_each_finished_call_reports_its_items_tags_and_a_whole_call_failure() -> None:
    engine = ScriptedTestEngine(failing=frozenset({"2"}))
    calls: list[BatchCall] = []
    window = EngineWindow(
        engine,
        batch_size=4,
        max_wait_ms=60_000,
        concurrency=1,
        timeout_s=WAIT,
        retries=0,
        on_batch=calls.append,
    )
    try:
        before = time.time_ns()
        _results([window.submit(_request(i), tag=f"t{i}") for i in range(4)])
    finally:
        window.close()
    # The full batch fails on item 2 and is split in halves until 2 is alone: every call is
    # reported, in the order it ran, with its items' tags.
    assert engine.batches[:2] == [["0", "1", "2", "3"], ["0", "1"]]
    assert [c.tags for c in calls] == [tuple(f"t{i}" for i in ids) for ids in engine.batches]
    assert [c.error for c in calls] == [
        "EngineBoom" if "2" in ids else None for ids in engine.batches
    ]
    assert all(before <= c.start_ns <= c.end_ns for c in calls)
