"""The `openai` engine waits out an outage of its server (moderator/engine/openai/outage.py):
a request whose attempts run out while the server answers nobody keeps trying instead of
becoming an error verdict; one that fails while the server works fails as before. The server
goes away behind a SwitchPort (connections refused, open ones cut)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from structlog.testing import capture_logs

from moderator.dev.openai.http import BodyFault
from moderator.dev.openai.server import CompletionParams, OpenAITestServer, ScriptedBackend
from moderator.engine.base import EngineResult
from moderator.engine.openai.engine import OpenAIEngine
from moderator.engine.openai.outage import ServerOutage
from moderator.engine.window import CLOSED_MESSAGE, EngineWindow, WindowResult
from moderator.errors import ErrorCode
from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.memory.broker import MemoryBroker
from moderator.obs.engine import EngineWatch
from moderator.obs.metrics import Metrics
from moderator.settings import EngineSettings
from tests.harness import (
    Instance,
    audit_ids,
    seed_uploads,
    settings_for,
    verdict_ids,
    wait_for,
    write_policies,
)
from tests.switch_port import SwitchPort
from tests.test_openai_engine import FAST, MODEL, SAFE, request

WAITED = re.compile(r"over (\d+) s, the server answering no request")
MakeEngine = Callable[..., OpenAIEngine]


@pytest.fixture
def server() -> Iterator[OpenAITestServer]:
    srv = OpenAITestServer(ScriptedBackend(SAFE), model=MODEL).start()
    yield srv
    srv.stop()


@pytest.fixture
def port(server: OpenAITestServer) -> Iterator[SwitchPort]:
    switch = SwitchPort(int(server.url.rsplit(":", 1)[1].split("/")[0]))
    yield switch
    switch.off()


@pytest.fixture
def make_engine(port: SwitchPort) -> Iterator[MakeEngine]:
    engines: list[OpenAIEngine] = []

    def make(**overrides: Any) -> OpenAIEngine:
        options = {**FAST, **{k: overrides.pop(k) for k in ("backoff_s",) if k in overrides}}
        values: dict[str, Any] = {
            "kind": "openai",
            "base_url": port.url("/v1"),
            "model": MODEL,
            "openai": {"attempts": 2},
            **overrides,
        }
        settings = EngineSettings.model_validate(values)
        engine = OpenAIEngine(settings, probe_timeout_s=0.5, **options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def classify_later(engine: OpenAIEngine) -> tuple[threading.Thread, list[EngineResult]]:
    results: list[EngineResult] = []
    caller = threading.Thread(target=lambda: results.extend(engine.classify([request()])))
    caller.start()
    return caller, results


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


@pytest.mark.usefixtures("info_logs")
def test_a_request_waits_out_a_server_that_went_away(
    make_engine: MakeEngine, port: SwitchPort, server: OpenAITestServer
) -> None:
    engine = make_engine(outage_wait_s=30)
    port.off()
    with capture_logs() as logs:
        caller, results = classify_later(engine)
        time.sleep(2.5)  # far more than the 2 attempts' backoff: it would have given up
        assert not results and caller.is_alive()
        assert engine.waiting_s() > 2
        port.on()
        caller.join(10)
    [result] = results
    assert result.error_code is None and result.assessment is not None
    [down] = events(logs, "engine_unavailable")
    assert "cannot reach" in down["reason"] and down["waiting_up_to_s"] == 30
    [back] = events(logs, "engine_available_again")
    assert back["unavailable_s"] >= 2.5 and back["waiting"] == 1
    assert len(events(logs, "openai_request_retry")) == 1  # the waiting tries are quiet
    assert engine.waiting_s() == 0


def test_a_request_gives_up_once_outage_wait_s_has_passed(
    make_engine: MakeEngine, port: SwitchPort
) -> None:
    engine = make_engine(outage_wait_s=1.5)
    port.off()
    started = time.monotonic()
    [result] = engine.classify([request()])
    elapsed = time.monotonic() - started
    assert result.error_code is ErrorCode.ENGINE_ERROR
    assert "cannot reach" in result.error_message
    waited = WAITED.search(result.error_message)
    assert waited is not None and int(waited.group(1)) >= 1
    assert 1.5 <= elapsed < 5


def test_without_an_outage_wait_a_refused_request_fails_after_its_attempts(
    make_engine: MakeEngine, port: SwitchPort
) -> None:
    engine = make_engine(outage_wait_s=0)
    port.off()
    started = time.monotonic()
    with capture_logs() as logs:
        [result] = engine.classify([request()])
    assert time.monotonic() - started < 1
    assert result.error_code is ErrorCode.ENGINE_ERROR
    assert "(2 attempts)" in result.error_message
    assert not events(logs, "engine_unavailable")


def test_a_500_while_the_server_answers_fails_at_once(
    make_engine: MakeEngine, server: OpenAITestServer
) -> None:
    engine = make_engine(outage_wait_s=30)
    server.fail_next(5, 500, "boom")
    started = time.monotonic()
    with capture_logs() as logs:
        [result] = engine.classify([request()])
    assert time.monotonic() - started < 1  # GET /models answered: the request's own failure
    assert result.error_code is ErrorCode.ENGINE_ERROR
    assert "HTTP 500: boom (2 attempts)" in result.error_message
    assert not events(logs, "engine_unavailable")


@pytest.mark.usefixtures("info_logs")
@pytest.mark.parametrize("status", [503, 502])
def test_a_gateway_answering_models_while_completions_fail_unavailable_is_waited_out(
    make_engine: MakeEngine, server: OpenAITestServer, status: int
) -> None:
    """A gateway in front of a stopped model server answers GET /models itself and every
    completion with "no healthy upstream": that says the server cannot take work now, not that
    this request is bad, so the request waits instead of becoming an error verdict."""
    engine = make_engine(outage_wait_s=30)
    server.fail_next(3, status, "no healthy upstream")  # both attempts and the first wait
    with capture_logs() as logs:
        [result] = engine.classify([request()])
    assert result.error_code is None and result.assessment is not None
    assert len(events(logs, "engine_unavailable")) == 1
    assert len(events(logs, "engine_available_again")) == 1


def test_a_request_failing_while_another_succeeds_fails_at_once(
    make_engine: MakeEngine, server: OpenAITestServer
) -> None:
    def respond(prompt: str, image: Image.Image, params: CompletionParams) -> str:
        if image.convert("RGB").getpixel((0, 0)) == (255, 0, 0):
            raise RuntimeError("model crashed on this one")
        return SAFE

    engine = make_engine(outage_wait_s=30, openai={"attempts": 3}, backoff_s=0.2)
    server.backend = ScriptedBackend(respond=respond)
    # GET /models fails too: only the other request's answer shows that the server works.
    server.models_fault = BodyFault(100, status=503)
    started = time.monotonic()
    crashed, fine = engine.classify([request(0, (255, 0, 0)), request(1)])
    assert time.monotonic() - started < 3
    assert fine.assessment is not None
    assert crashed.error_code is ErrorCode.ENGINE_ERROR and "HTTP 500" in crashed.error_message
    assert not WAITED.search(crashed.error_message)


def test_the_outage_probe_decides_when_nothing_else_was_answered(
    make_engine: MakeEngine, server: OpenAITestServer
) -> None:
    """The same failing request, alone: with GET /models failing too, it waits (and gives up
    at outage_wait_s), where with GET /models answering it failed at once (above)."""
    engine = make_engine(outage_wait_s=1.5)
    server.fail_next(100, 500, "boom")
    server.models_fault = BodyFault(100, status=503)
    [result] = engine.classify([request()])
    assert result.error_code is ErrorCode.ENGINE_ERROR and "HTTP 500: boom" in result.error_message
    assert WAITED.search(result.error_message)


def test_the_engine_window_holds_requests_while_they_wait(
    make_engine: MakeEngine, port: SwitchPort
) -> None:
    """The window's own deadline (timeout_s from dispatch) and its stalled rule (nothing
    finished for timeout_s) would both have failed these requests during the outage."""
    engine = make_engine(
        outage_wait_s=30, timeout_s=0.5, openai={"attempts": 2, "max_in_flight": 1}
    )
    window = EngineWindow(
        engine, batch_size=1, max_wait_ms=0, concurrency=1, timeout_s=0.5, retries=0
    )
    try:
        port.off()
        futures = [window.submit(request(i)) for i in range(5)]  # more than its call limit
        time.sleep(0.5 + engine.grace_s + 1.5)
        assert not any(future.done() for future in futures)
        assert window.hung_calls == 0  # its call waits for the server: it does not hang
        port.on()
        results: list[WindowResult] = [future.result(15) for future in futures]
    finally:
        window.close()
    assert [r.result.error_code for r in results] == [None] * 5


def test_readiness_fails_while_requests_wait_for_the_server(
    make_engine: MakeEngine, port: SwitchPort
) -> None:
    engine = make_engine(outage_wait_s=30)
    window = EngineWindow(
        engine, batch_size=1, max_wait_ms=0, concurrency=1, timeout_s=60, retries=0
    )
    watch = EngineWatch(engine, window, Metrics(None), failing_s=1.0)
    try:
        assert window.submit(request(0)).result(10).result.assessment is not None
        assert watch.check().ok
        port.off()
        future = window.submit(request(1))
        wait_until(lambda: engine.waiting_s() > 1.2)
        check = watch.check()
        assert not check.ok and "requests wait for the server" in check.detail
        port.on()
        assert future.result(10).result.assessment is not None
        assert watch.check().ok
    finally:
        window.close()


def test_closing_during_a_wait_ends_it_at_once(make_engine: MakeEngine, port: SwitchPort) -> None:
    engine = make_engine(outage_wait_s=300)
    window = EngineWindow(
        engine, batch_size=1, max_wait_ms=0, concurrency=1, timeout_s=60, retries=0
    )
    port.off()
    future = window.submit(request())
    caller, results = classify_later(engine)
    wait_until(lambda: engine.waiting_s() > 0)
    started = time.monotonic()
    window.close()  # as at shutdown: the window first (not waiting for the call), then the engine
    assert time.monotonic() - started < 1
    engine.close()
    caller.join(5)
    assert time.monotonic() - started < 3
    assert future.result(0).result.error_message == CLOSED_MESSAGE  # not published
    [result] = results
    assert result.error_code is ErrorCode.ENGINE_ERROR and "closed" in result.error_message


# -- end to end: the ingest loop and processor, the in-memory broker -----------------------------


def outage_instance(tmp_path: Path, port: SwitchPort, **over: Any) -> tuple[MemoryBroker, Instance]:
    broker, store = MemoryBroker(default_partitions=4), InMemoryObjectStore()
    settings = settings_for(
        write_policies(tmp_path / "policies"),
        **{
            "engine.kind": "openai",
            "engine.base_url": port.url("/v1"),
            "engine.model": MODEL,
            "engine.openai.attempts": 2,
            "engine.outage_wait_s": 60,
            "flow.high_in_flight": 10,  # fewer than the uploads: intake pauses during the outage
            "flow.low_in_flight": 5,
            "cache.max_entries": 0,
            **over,
        },
    )
    instance = Instance(broker, store, settings).start()  # its start-up probe finds the server
    port.off()
    seed_uploads(broker, store, 30)
    return broker, instance


def test_uploads_wait_out_a_model_server_outage(tmp_path: Path, port: SwitchPort) -> None:
    broker, instance = outage_instance(tmp_path, port)
    try:
        wait_for(lambda: instance.loop.paused, 20, "intake paused")
        time.sleep(5)
        assert not verdict_ids(broker)  # nothing judged, no error verdict
        assert instance.loop.paused
        port.on()
        wait_for(lambda: len(verdict_ids(broker)) == 30, 60, "every verdict")
    finally:
        instance.shutdown(timeout=30)
    assert instance.error is None
    verdicts = [json.loads(r.value or b"{}") for r in broker.records("moderation.verdicts")]
    assert [v.get("error") for v in verdicts] == [None] * 30
    assert set(verdict_ids(broker).values()) == {1} and set(audit_ids(broker).values()) == {1}


@pytest.mark.usefixtures("info_logs")
def test_a_shutdown_during_the_outage_commits_none_of_the_waiting_events(
    tmp_path: Path, port: SwitchPort
) -> None:
    broker, instance = outage_instance(tmp_path, port, **{"flow.drain_grace_s": 1.0})
    wait_for(lambda: instance.pipeline.window.pending > 0, 20, "requests in the engine")
    time.sleep(2)  # past the attempts: waiting for the server
    with capture_logs() as logs:
        started = time.monotonic()
        instance.shutdown(timeout=30)
    assert time.monotonic() - started < 10  # the drain's grace and the window's close, no wait
    assert not verdict_ids(broker)
    names = [line["event"] for line in logs]
    assert "event_abandoned" in names and "event_error" not in names


def test_a_server_that_accepts_and_never_answers_is_waited_out_too(
    make_engine: MakeEngine, port: SwitchPort
) -> None:
    """Each try runs into the request's own deadline, GET /models too: the window, whose
    deadline is the same timeout_s, must leave the request the time to find that out."""
    engine = make_engine(outage_wait_s=30, timeout_s=1)
    window = EngineWindow(
        engine, batch_size=1, max_wait_ms=0, concurrency=1, timeout_s=1, retries=0
    )
    try:
        port.hang()
        future = window.submit(request())
        wait_until(lambda: engine.waiting_s() > 0)
        time.sleep(1.5)
        assert not future.done()
        port.on()
        result = future.result(10).result
    finally:
        window.close()
    assert result.error_code is None and result.assessment is not None


# -- the outage's times, on a clock of the test's own --------------------------------------------


@pytest.mark.usefixtures("info_logs")
def test_the_outage_times_and_its_two_log_lines() -> None:
    now = [100.0]
    outage = ServerOutage(300, clock=lambda: now[0])
    assert outage.waited_at() == float("-inf") and outage.waiting_s() == 0
    with capture_logs() as logs:
        outage.failed()
        now[0] = 104.0
        outage.failed()  # the outage is timed from its first failure
        outage.waiting(1, "cannot reach it")
        outage.waiting(1, "cannot reach it")
        now[0] = 110.0
        assert outage.waited_at() == 110.0 and outage.waiting_s() == 10.0
        assert not outage.answered_since(105.0)
        outage.answered()
        outage.waiting(-1)
        outage.waiting(-1)
        now[0] = 120.0
        outage.answered()
    assert outage.waited_at() == 110.0 and outage.waiting_s() == 0
    assert outage.answered_since(105.0)
    assert [(e["event"], e.get("unavailable_s"), e.get("waiting")) for e in logs] == [
        ("engine_unavailable", None, None),
        ("engine_available_again", 10.0, 2),
    ]


def test_closing_ends_the_tasks_the_loop_still_holds_inside_it() -> None:
    """A task the shutdown did not see (started after it listed the loop's tasks) is cancelled
    and run to its end in the loop before the loop closes: left to the garbage collector, its
    connection attempts would unwind outside any loop."""
    from moderator.engine.openai.client import OpenAIClient
    from moderator.engine.openai.limit import InFlightLimit
    from moderator.settings import OpenAISettings

    client = OpenAIClient(
        "http://127.0.0.1:9/v1",
        OpenAISettings(),
        timeout_s=5,
        limit=InFlightLimit(4),
        connections=4,
        max_response_bytes=1 << 20,
    )
    ended: list[str] = []

    async def unseen() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append("in its loop")

    async def nothing() -> None:  # as if the shutdown had listed the tasks before this one
        return None

    started = asyncio.run_coroutine_threadsafe(unseen(), client._loop)
    client._shutdown = nothing  # type: ignore[method-assign]
    client.close()
    assert started.cancelled() and ended == ["in its loop"]
    assert client._loop.is_closed()
