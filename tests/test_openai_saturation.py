"""Keeping a continuous-batching server full through the `openai` engine: the adaptive in-flight
limit (AIMD), per-item dispatch in the engine window (no batch barrier), the client's handling
of dropped connections, the test server's own latency and connection backlog, and the
simulated batching server the saturation benchmark (bench/saturation.py) runs against.
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest
from PIL import Image

from moderator.dev.openai.protocol import CompletionParams
from moderator.dev.openai.server import OpenAITestServer, ScriptedBackend
from moderator.dev.openai.simulator import BatchingModel, BatchingSimulator
from moderator.engine.base import EngineRequest, EngineResult
from moderator.engine.openai.engine import OpenAIEngine
from moderator.engine.openai.limit import InFlightLimit
from moderator.engine.window import EngineWindow
from moderator.engine.window_engines import SelfBatching
from moderator.events.verdict import CATEGORIES, Assessment, ModelInfo
from moderator.settings import EngineSettings

MODEL = "test-guard"
SAFE = '{"rating": "Safe", "category": "NA: None applying", "rationale": "A plain square."}'


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def full_round(limit: InFlightLimit, latency_s: float, *, in_flight: int | None = None) -> None:
    """Answer as many requests as the limit, each sent with `in_flight` open (default: the
    limit, i.e. the client had enough to send)."""
    for _ in range(limit.limit):
        epoch = limit.started(in_flight if in_flight is not None else limit.limit)
        limit.answered(latency_s, epoch)


def request(i: int) -> EngineRequest:
    return EngineRequest(f"r{i}", Image.new("RGB", (16, 16), (i % 256, 0, 0)), "p", CATEGORIES)


# -- the in-flight limit ---------------------------------------------------------------------------


def test_limit_doubles_while_latency_stays_flat_then_grows_by_one() -> None:
    limit = InFlightLimit(64, tolerance=2.0, clock=Clock())
    assert limit.limit == 8
    full_round(limit, 0.10)
    assert limit.limit == 16
    full_round(limit, 0.10)
    assert limit.limit == 32
    full_round(limit, 0.15)  # 1.5 x the base: past sqrt(2), slow start ends
    assert limit.limit == 33
    full_round(limit, 0.15)
    assert limit.limit == 34
    assert limit.decreases == 0


def test_limit_shrinks_when_latency_rises_past_the_tolerance() -> None:
    limit = InFlightLimit(64, tolerance=2.0, clock=Clock())
    full_round(limit, 0.10)
    full_round(limit, 0.10)
    assert limit.limit == 32
    full_round(limit, 0.19)  # under 2 x the base: still allowed, growing by one
    assert limit.limit == 33
    full_round(limit, 0.25)  # requests queue at the server
    assert limit.limit == 29  # floor(33 x 0.9)
    assert limit.decreases == 1
    assert limit.baseline_s == pytest.approx(0.10)


def test_overload_halves_the_limit_once_per_round_trip() -> None:
    clock = Clock()
    limit = InFlightLimit(64, clock=clock)
    full_round(limit, 0.10)
    assert limit.limit == 16
    limit.overloaded()
    assert limit.limit == 8
    limit.overloaded()  # the same burst of 429s: no second cut
    assert limit.limit == 8
    clock.now += 0.2  # a round trip later
    limit.overloaded()
    assert limit.limit == 4
    for _ in range(10):
        clock.now += 1
        limit.overloaded()
    assert limit.limit == 1
    assert limit.decreases == 4  # 16 to 8 to 4 to 2 to 1, never below


def test_limit_holds_while_the_client_has_less_to_send() -> None:
    limit = InFlightLimit(64, clock=Clock())
    full_round(limit, 0.10, in_flight=3)
    full_round(limit, 0.10, in_flight=3)
    assert limit.limit == 8


def test_limit_stays_within_its_maximum() -> None:
    limit = InFlightLimit(12, clock=Clock())
    for _ in range(5):
        full_round(limit, 0.10)
    assert limit.limit == 12


def test_a_fixed_limit_never_moves() -> None:
    clock = Clock()
    limit = InFlightLimit(16, adaptive=False, clock=clock)
    assert limit.limit == 16
    full_round(limit, 0.10)
    full_round(limit, 5.0)
    limit.overloaded()
    assert limit.limit == 16
    assert limit.decreases == 0


def test_answers_to_requests_sent_before_a_change_are_left_out() -> None:
    limit = InFlightLimit(64, clock=Clock())
    early = [limit.started(8) for _ in range(8)]
    full_round(limit, 0.10)
    assert limit.limit == 16
    for epoch in early * 4:  # slow answers to requests sent under the old limit
        limit.answered(9.0, epoch)
    assert limit.limit == 16 and limit.decreases == 0
    full_round(limit, 0.10)
    assert limit.limit == 32


def test_a_probe_round_measures_the_base_latency_afresh() -> None:
    clock = Clock()
    limit = InFlightLimit(64, tolerance=2.0, probe_after_s=10, clock=clock)
    full_round(limit, 0.10)
    full_round(limit, 0.10)
    full_round(limit, 0.16)
    assert limit.limit == 33
    for _ in range(4):  # requests queue at the server: rounds stay well above the base
        clock.now += 2
        full_round(limit, 0.18, in_flight=1)
    assert limit.probes == 0
    clock.now += 2  # 10 s without a round near the base
    full_round(limit, 0.18, in_flight=1)
    assert limit.probes == 1
    assert limit.limit == 8  # one round at a quarter of the limit: the queue drains
    full_round(limit, 0.13)  # the server has become slower than the old base says
    assert limit.limit == 33  # back where it was
    assert limit.baseline_s == pytest.approx(0.13)
    full_round(limit, 0.27)  # over 2 x the new base
    assert limit.limit == 29
    assert limit.decreases == 1


def test_a_server_that_became_slower_for_good_gets_the_limit_back() -> None:
    """A shared server that got busier: every round is over the tolerance against the old
    base. The limit shrinks, but the base is measured again once it is stale, and the limit
    grows back instead of staying at 1."""
    clock = Clock()
    limit = InFlightLimit(16, tolerance=2.5, probe_after_s=20, clock=clock)
    full_round(limit, 0.05)
    assert limit.limit == 16
    for _ in range(40):  # 0.2 s now, 4 x the base, every round for 20 s
        clock.now += 0.5
        full_round(limit, 0.20)
        if limit.probes:
            break
    assert limit.probes == 1
    for _ in range(20):
        clock.now += 0.5
        full_round(limit, 0.20)
    assert limit.baseline_s == pytest.approx(0.20)
    assert limit.limit == 16


def test_at_a_limit_of_one_a_round_over_the_tolerance_is_the_new_base() -> None:
    clock = Clock()
    limit = InFlightLimit(16, tolerance=2.0, probe_after_s=10, clock=clock, initial=1)
    full_round(limit, 0.05)  # the base: 0.05 s
    limit.overloaded()
    assert limit.limit == 1
    full_round(limit, 0.08)  # within the tolerance: the base holds, the limit grows
    assert limit.limit == 2 and limit.probes == 0
    clock.now += 1
    limit.overloaded()
    assert limit.limit == 1
    full_round(limit, 0.30)  # 6 x the base with one request out: the server is slower now
    assert limit.probes == 1 and limit.baseline_s == pytest.approx(0.30)
    assert limit.limit == 1
    for expected in (2, 4, 8, 16):  # slow start again from the new base
        full_round(limit, 0.30)
        assert limit.limit == expected


def test_invalid_limit_settings_are_refused() -> None:
    for kwargs in ({"maximum": 0}, {"maximum": 4, "tolerance": 1.0}, {"maximum": 4, "initial": 0}):
        with pytest.raises(ValueError, match="invalid in-flight limit"):
            InFlightLimit(**kwargs)


# -- the engine window in front of a self-batching engine ------------------------------------------


class ItemEngine:
    """A SelfBatching test engine: each item takes its own time; records every call."""

    def __init__(self, limit: int, maximum: int, delays: dict[str, float] | None = None) -> None:
        self.limit = limit
        self.maximum = maximum
        self.delays = delays or {}
        self.calls: list[int] = []
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(engine="fake", name="items", categories=(), smoke_test=True)

    @property
    def input_size(self) -> int:
        return 64

    @property
    def max_calls(self) -> int:
        return self.maximum

    @property
    def call_limit(self) -> int:
        return self.limit

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        with self._lock:
            self.calls.append(len(batch))
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            time.sleep(max(self.delays.get(r.request_id, 0.02) for r in batch))
            safe = Assessment(rating="Safe", category="NA: None applying", rationale="ok")
            return [EngineResult(assessment=safe) for _ in batch]
        finally:
            with self._lock:
                self.running -= 1

    def close(self) -> None:
        pass


@pytest.fixture
def make_window() -> Iterator[Callable[..., EngineWindow]]:
    windows: list[EngineWindow] = []

    def make(engine: Any, **options: Any) -> EngineWindow:
        values = {"batch_size": 8, "max_wait_ms": 10_000, "concurrency": 1, "timeout_s": 10}
        window = EngineWindow(engine, retries=0, **{**values, **options})
        windows.append(window)
        return window

    yield make
    for window in windows:
        window.close()


def test_a_self_batching_engine_gets_each_item_alone_and_at_once(
    make_window: Callable[..., EngineWindow],
) -> None:
    engine = ItemEngine(limit=8, maximum=8, delays={"r0": 1.0})
    assert isinstance(engine, SelfBatching)
    window = make_window(engine)  # a batching engine would wait 10 s for a batch of 8
    started = time.monotonic()
    futures = [window.submit(request(i)) for i in range(6)]
    for future in futures[1:]:
        assert future.result(5).result.assessment is not None
    fast_done = time.monotonic() - started
    assert futures[0].result(5).result.assessment is not None
    assert fast_done < 0.6  # the slow item held no batch-mate back
    assert engine.calls == [1] * 6


def test_the_window_keeps_to_the_engines_call_limit(
    make_window: Callable[..., EngineWindow],
) -> None:
    engine = ItemEngine(limit=3, maximum=10)
    window = make_window(engine)
    assert window.concurrency == 3  # busy ratio is measured against the limit
    futures = [window.submit(request(i)) for i in range(15)]
    for future in futures:
        future.result(5)
    assert engine.max_running == 3
    engine.limit = 6
    futures = [window.submit(request(i)) for i in range(30)]
    for future in futures:
        future.result(5)
    assert engine.max_running == 6
    assert window.concurrency == 6


# -- the openai engine against the test server -----------------------------------------------------


@pytest.fixture
def make_engine() -> Iterator[Callable[..., OpenAIEngine]]:
    engines: list[OpenAIEngine] = []

    def make(url: str, *, backoff_s: float = 0.01, **overrides: Any) -> OpenAIEngine:
        values: dict[str, Any] = {"kind": "openai", "base_url": url, "model": MODEL, **overrides}
        engine = OpenAIEngine(
            EngineSettings.model_validate(values), backoff_s=backoff_s, backoff_max_s=0.05
        )
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def _through_window(engine: OpenAIEngine, n: int) -> tuple[list[EngineResult], list[int]]:
    """n items through an engine window; the results and the limit sampled every 10 ms."""
    window = EngineWindow(
        engine, batch_size=8, max_wait_ms=20, concurrency=1, timeout_s=30, retries=0
    )
    limits: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            limits.append(engine.in_flight_limit)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        futures = [window.submit(request(i)) for i in range(n)]
        results = [f.result(60).result for f in futures]
    finally:
        done.set()
        sampler.join()
        window.close()
    return results, limits


def test_the_engine_declares_its_limits(make_engine: Callable[..., OpenAIEngine]) -> None:
    with OpenAITestServer(ScriptedBackend(SAFE), model=MODEL) as server:
        engine = make_engine(server.url)
        assert isinstance(engine, SelfBatching)
        assert (engine.max_in_flight, engine.in_flight_limit) == (64, 8)
        # A few more calls than requests: they wait encoded, ready to go out.
        assert (engine.max_calls, engine.call_limit) == (80, 10)
        pool = make_engine(server.url, openai={"max_in_flight": 32, "max_connections": 12})
        assert (pool.max_in_flight, pool.in_flight_limit) == (12, 8)
        fixed = make_engine(server.url, openai={"max_in_flight": 20, "adaptive": False})
        assert (fixed.max_in_flight, fixed.in_flight_limit, fixed.call_limit) == (20, 20, 25)


def test_adaptive_limit_grows_until_every_slot_is_busy(
    make_engine: Callable[..., OpenAIEngine],
) -> None:
    # Latency flat up to 20 in flight. A service time well above the client's own CPU time per
    # request keeps this true on a busy machine too: growth slows once latency passes 1.58 times
    # the lowest seen, and with 0.25 s a CI run beside a torch-heavy test once added that much.
    model = BatchingModel(slots=20, alpha_s=0.5, beta_s=0.0)
    simulator = BatchingSimulator(model)
    with OpenAITestServer(simulator, model=MODEL) as server:
        engine = make_engine(server.url)
        results, limits = _through_window(engine, 200)
    assert all(r.assessment is not None for r in results)
    assert max(limits) >= 32  # it went past the slots (8, 16, 32 while latency stayed flat)
    assert simulator.stats().max_running == 20


def test_adaptive_limit_backs_off_when_requests_queue(
    make_engine: Callable[..., OpenAIEngine],
) -> None:
    # Beyond 2, requests queue. The service time is well above the client's own CPU time per
    # request, so that a busy machine does not blur the latency rise.
    model = BatchingModel(slots=2, alpha_s=0.05, beta_s=0.0)
    simulator = BatchingSimulator(model)
    with OpenAITestServer(simulator, model=MODEL) as server:
        engine = make_engine(server.url, openai={"latency_tolerance": 1.5})
        results, limits = _through_window(engine, 100)
        fixed = make_engine(server.url, openai={"adaptive": False, "max_in_flight": 64})
        _, fixed_limits = _through_window(fixed, 10)
    assert all(r.assessment is not None for r in results)
    # 8, then 16 (twice the latency of 8: over the tolerance), then back under it; a fixed
    # cap would have sent all 64 at once.
    assert max(limits) <= 16
    assert limits[-1] < 16
    assert fixed_limits and set(fixed_limits) == {64}


def test_429_answers_shrink_the_limit(make_engine: Callable[..., OpenAIEngine]) -> None:
    model = BatchingModel(slots=2, alpha_s=0.03, beta_s=0.0, max_queue=4)  # 6 fit, 8 do not
    simulator = BatchingSimulator(model)
    with OpenAITestServer(simulator, model=MODEL) as server:
        engine = make_engine(server.url, openai={"attempts": 10})
        results, limits = _through_window(engine, 60)
    assert all(r.assessment is not None for r in results), [
        (r.error_code, r.error_message, r.raw_output) for r in results if r.assessment is None
    ]
    assert simulator.stats().rejected > 0
    assert min(limits) <= 4  # halved from 8 at least once


def test_a_dropped_connection_is_retried_at_once(
    make_engine: Callable[..., OpenAIEngine],
) -> None:
    with OpenAITestServer(ScriptedBackend(SAFE), model=MODEL) as server:
        engine = make_engine(server.url, backoff_s=0.5)  # a backoff would wait 0.5-1 s
        server.drop_next(1)
        started = time.monotonic()
        [result] = engine.classify([request(0)])
        elapsed = time.monotonic() - started
    assert result.assessment is not None, result.error_message
    assert result.generation["attempts"] == 2
    assert elapsed < 0.4


def test_a_request_waiting_to_be_tried_again_holds_no_request_slot() -> None:
    """One slot: the request answered 429 sleeps in its backoff outside the gate, so the
    other is sent meanwhile instead of queueing behind the sleep."""
    values = {"kind": "openai", "base_url": "", "model": MODEL}
    values["openai"] = {"max_in_flight": 1, "adaptive": False}
    with OpenAITestServer(ScriptedBackend(SAFE), model=MODEL) as server:
        values["base_url"] = server.url
        engine = OpenAIEngine(
            EngineSettings.model_validate(values), backoff_s=0.5, backoff_max_s=1.0
        )
        try:
            server.fail_next(1, 429, "slow down")
            results = engine.classify([request(1), request(2)])
        finally:
            engine.close()
        bodies = [json.dumps(body, sort_keys=True) for body in server.requests]
    assert all(r.assessment is not None for r in results)
    assert len(bodies) == 3
    assert bodies[1] != bodies[0] and bodies[2] == bodies[0]  # the other went first


# -- the test server and the simulator -------------------------------------------------------------


def test_the_test_server_takes_a_burst_of_new_connections() -> None:
    """An empty pool meeting a burst opens many connections at once: none may stall (the
    kernel's SYN retry waits 1 s) or be reset (ReadError) for want of listen backlog."""
    with OpenAITestServer(ScriptedBackend(SAFE), model=MODEL) as server:
        host, port = server.url.removeprefix("http://").split("/")[0].split(":")
        started = time.monotonic()
        socks = [socket.create_connection((host, int(port)), timeout=2) for _ in range(150)]
        answered = 0
        try:
            for sock in socks:
                sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            for sock in socks:
                answered += sock.recv(16).startswith(b"HTTP/1.1 200")
        finally:
            for sock in socks:
                sock.close()
        elapsed = time.monotonic() - started
    assert answered == 150
    assert elapsed < 2.0


def test_the_test_server_answers_without_nagle_delay() -> None:
    """The head and the body of an answer are two writes: with Nagle's algorithm the body
    waits for the client's delayed ACK, 40 ms per request."""
    with OpenAITestServer(ScriptedBackend(SAFE), model=MODEL) as server, httpx.Client() as client:
        times = []
        for _ in range(15):
            started = time.perf_counter()
            assert client.get(f"{server.url}/models").status_code == 200
            times.append(time.perf_counter() - started)
    assert statistics.median(times) < 0.02


def _image() -> Image.Image:
    return Image.new("RGB", (8, 8))


def test_the_simulator_serves_slots_in_order_with_batch_dependent_times() -> None:
    services: list[float] = []

    def sleep(seconds: float) -> None:
        services.append(seconds)
        time.sleep(seconds)

    model = BatchingModel(slots=2, alpha_s=0.05, beta_s=0.02)
    simulator = BatchingSimulator(model, sleep=sleep)
    start = threading.Barrier(4)

    def call() -> None:
        start.wait()
        simulator.complete("p", _image(), CompletionParams())

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    stats = simulator.stats()
    # alpha + beta * b, b counting the running requests with the one admitted: 0.07 s for
    # b = 1, 0.09 s for b = 2. Each sleep is its service less the time its thread took to
    # wake (a started waiter's service runs from the moment its slot was freed), so only the
    # upper bound is tight. A sleep over 0.07 s shows a request served with the other slot busy.
    assert len(services) == 4 and services[0] <= 0.07 + 0.002
    assert all(s <= 0.09 + 0.002 for s in services)
    assert max(services) > 0.075
    assert stats.served == 4 and stats.max_running == 2 and stats.max_waiting >= 1
    assert stats.occupancy > 0.8
    assert model.ceiling == pytest.approx(2 / 0.09)
    simulator.reset()
    assert simulator.stats().served == 0


def test_the_simulator_answers_its_faults_over_http() -> None:
    failing = BatchingSimulator(BatchingModel(slots=1, alpha_s=0.01, error_rate=0.999, seed=1))
    with OpenAITestServer(failing, model=MODEL) as server:
        engine_body = _body()
        response = httpx.post(f"{server.url}/chat/completions", content=engine_body)
    assert response.status_code == 500
    assert failing.stats().errors == 1

    busy = BatchingSimulator(BatchingModel(slots=1, alpha_s=0.5, max_queue=0))
    with OpenAITestServer(busy, model=MODEL) as server:
        first = threading.Thread(
            target=httpx.post, args=(f"{server.url}/chat/completions",), kwargs={"content": _body()}
        )
        first.start()
        deadline = time.monotonic() + 5
        while busy.stats().max_running < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        response = httpx.post(f"{server.url}/chat/completions", content=_body())
        first.join(5)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert busy.stats().rejected == 1


def _body() -> bytes:
    from moderator.engine.openai.request import ChatFormat
    from moderator.settings import GenerationSettings, OpenAISettings

    encoded = ChatFormat(MODEL, GenerationSettings(), OpenAISettings(), source="t").encode(
        request(0)
    )
    assert isinstance(encoded, bytes)
    return encoded


def test_simulator_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="slots"):
        BatchingModel(slots=0)
    with pytest.raises(ValueError, match="jitter"):
        BatchingModel(jitter=1.0)
    with pytest.raises(ValueError, match="error_rate"):
        BatchingModel(error_rate=1.0)


def test_requests_on_the_wire_keep_to_the_limit_with_calls_held_ready(
    make_engine: Callable[..., OpenAIEngine],
) -> None:
    model = BatchingModel(slots=64, alpha_s=0.05, beta_s=0.0)
    simulator = BatchingSimulator(model)
    with OpenAITestServer(simulator, model=MODEL) as server:
        engine = make_engine(server.url, openai={"max_in_flight": 6, "adaptive": False})
        assert engine.call_limit == 8
        results, _ = _through_window(engine, 60)
    assert all(r.assessment is not None for r in results)
    assert simulator.stats().max_running == 6


def test_a_request_never_sent_says_it_waited_for_a_slot() -> None:
    from moderator.engine.openai.failure import failure
    from moderator.errors import ErrorCode

    queued = failure(TimeoutError(), "http://guard:8000/v1", 15, 0)
    assert queued.code == ErrorCode.ENGINE_TIMEOUT
    assert queued.message == (
        "not sent to http://guard:8000/v1 within 15s: every request slot stayed taken "
        "(engine.openai.max_in_flight, or the adaptive limit below it)"
    )
    sent = failure(TimeoutError(), "http://guard:8000/v1", 15, 1)
    assert sent.message == "no answer from http://guard:8000/v1 within 15s (1 attempt)"


def test_an_answer_from_another_model_is_logged_once_per_name() -> None:
    from structlog.testing import capture_logs

    from moderator.engine.openai.request import ChatFormat
    from moderator.settings import GenerationSettings, OpenAISettings

    chat = ChatFormat(MODEL, GenerationSettings(), OpenAISettings(), source="t")

    def answer(model: str) -> dict[str, object]:
        return {"model": model, "choices": [{"message": {"content": SAFE}}]}

    with capture_logs() as logs:
        for served in (MODEL, "other-guard", "other-guard", "third-guard"):
            result = chat.result(request(0), answer(served), 1)
            assert result.generation["served_model"] == served
    lines = [line for line in logs if line["event"] == "openai_served_model_differs"]
    assert [(line["model"], line["served_model"]) for line in lines] == [
        (MODEL, "other-guard"),
        (MODEL, "third-guard"),
    ]
    assert all(line["log_level"] == "warning" for line in lines)


def test_an_error_answer_echoing_the_key_reaches_the_verdict_masked() -> None:
    values: dict[str, Any] = {"kind": "openai", "base_url": "", "model": MODEL}
    values["openai"] = {"api_key": "APIKEYSECRET42"}
    with OpenAITestServer(ScriptedBackend(SAFE), model=MODEL) as server:
        values["base_url"] = server.url
        engine = OpenAIEngine(EngineSettings.model_validate(values), backoff_s=0.01)
        try:
            server.fail_next(
                1, 400, "bad request: echo auth=Bearer APIKEYSECRET42 basic=Basic c3ZjOnB3ZDEyMw=="
            )
            [result] = engine.classify([request(0)])
        finally:
            engine.close()
        url = server.url
    message = result.error_message or ""
    assert message.startswith(f"{url} answered HTTP 400: bad request: echo auth=Bearer ***")
    assert "APIKEYSECRET42" not in message and "c3ZjOnB3ZDEyMw" not in message


def test_messages_show_the_servers_url_without_credentials_or_query() -> None:
    from moderator.engine.openai.request import shown_url
    from moderator.masking import mask_credentials, mask_values

    assert shown_url("http://u:pw@guard:8000/v1?api-key=Q#f") == "http://guard:8000/v1"
    assert shown_url("https://[::1]:8443/v1") == "https://[::1]:8443/v1"
    assert mask_credentials("token: abcdef123 and api_key=zzzzzz99") == (
        "token: *** and api_key=***"
    )
    assert mask_values("said hunter2-secret", ("hunter2-secret",)) == "said ***"
