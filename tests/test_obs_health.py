"""Readiness: named checks, a remote dependency's contact check, the engine's check and gauges."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from moderator.engine.answers import AnswerClock
from moderator.engine.base import EngineRequest, EngineResult
from moderator.engine.window import EngineWindow
from moderator.errors import ErrorCode
from moderator.events.verdict import Assessment
from moderator.obs.engine import EngineWatch
from moderator.obs.health import Check, Contact, Readiness
from moderator.obs.telemetry import Telemetry
from tests.test_obs_http import samples


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_expected_checks_report_starting_until_added() -> None:
    readiness = Readiness()
    assert readiness.evaluate() == (False, {})  # nothing registered is not ready
    readiness.expect("broker", "engine")
    readiness.add("broker", lambda: Check(True, "fine"))
    ready, checks = readiness.evaluate()
    assert not ready
    assert checks == {"broker": Check(True, "fine"), "engine": Check(False, "starting")}
    readiness.add("engine", lambda: Check(True, "answered"))
    assert readiness.evaluate()[0]


def test_a_shared_name_passes_only_when_every_check_under_it_does() -> None:
    readiness = Readiness()
    readiness.add("broker", lambda: Check(True, "answered 1.0 s ago"))
    readiness.add("broker", lambda: Check(False, "kafka: no metadata within 2 s"))
    ready, checks = readiness.evaluate()
    assert not ready
    assert checks["broker"] == Check(False, "kafka: no metadata within 2 s")


def test_a_check_that_raises_is_a_failed_check() -> None:
    def broken() -> Check:
        raise RuntimeError("boom")

    readiness = Readiness()
    readiness.add("engine", broken)
    assert readiness.evaluate() == (False, {"engine": Check(False, "check failed: RuntimeError")})


def test_contact_is_judged_by_the_work_while_it_reports() -> None:
    clock, asked = Clock(), []
    contact = Contact(lambda: asked.append(1), fresh_s=15, retry_s=5, clock=clock)
    contact.answered()
    clock.now += 10
    assert contact() == Check(True, "answered 10.0 s ago")
    assert asked == []  # fresh: no probe


def test_contact_probes_when_quiet_at_most_every_retry_s() -> None:
    clock, asked = Clock(), []
    contact = Contact(lambda: asked.append(clock.now), fresh_s=15, retry_s=5, clock=clock)
    assert contact().ok and asked == [100.0]  # never heard from: asked at once
    clock.now += 16
    assert contact().ok and asked == [100.0, 116.0]
    clock.now += 1  # fresh again after the probe's answer
    assert contact().ok and len(asked) == 2


def test_contact_failure_is_reported_with_its_reason_until_it_answers() -> None:
    clock = Clock()
    down = threading.Event()
    down.set()

    def probe() -> None:
        if down.is_set():
            raise OSError("connect to postgresql://app:hunter2@db:5432 refused")

    contact = Contact(probe, fresh_s=15, retry_s=5, clock=clock)
    check = contact()
    assert not check.ok
    assert "hunter2" not in check.detail and "refused" in check.detail
    down.clear()
    clock.now += 1
    assert not contact().ok  # not asked again before retry_s
    clock.now += 5
    assert contact().ok


def test_contact_reported_failure_beats_an_older_answer() -> None:
    clock = Clock()
    contact = Contact(None, clock=clock)
    assert contact() == Check(False, "no answer yet")
    contact.answered()
    clock.now += 1
    contact.failed("database unreachable")
    assert contact() == Check(False, "database unreachable")
    clock.now += 100  # without a probe, the last word stands
    contact.answered()
    assert contact().ok


def test_an_old_answer_is_no_answer_while_a_probe_cannot_ask() -> None:
    """A probe that hangs in another request keeps the lock: the requests meanwhile must not
    report the last answer, however old, as the cluster answering."""
    clock, entered, release = Clock(), threading.Event(), threading.Event()

    def hanging() -> None:
        entered.set()
        release.wait(10)

    contact = Contact(hanging, fresh_s=15, retry_s=5, clock=clock)
    contact.answered()
    clock.now += 16
    asking = threading.Thread(target=contact)
    asking.start()
    assert entered.wait(5)
    assert contact() == Check(True, "answered 16.0 s ago")  # within fresh_s + retry_s
    clock.now += 30
    assert contact() == Check(False, "no answer for 46.0 s")
    release.set()
    asking.join(5)


def test_a_closed_contact_closes_its_probe() -> None:
    closed: list[bool] = []

    class Probe:
        def __call__(self) -> None:
            pass

        def close(self) -> None:
            closed.append(True)

    contact = Contact(Probe())
    contact.close()
    assert closed == [True] and contact() == Check(False, "stopping")


def test_a_closed_contact_never_probes() -> None:
    asked: list[int] = []
    contact = Contact(lambda: asked.append(1))
    contact.close()
    assert contact() == Check(False, "stopping") and asked == []


class _Engine:
    """Answers after `gate` opens; errors for request ids starting with `fail`."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.ready = True

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        self.gate.wait(5)
        return [
            EngineResult(error_code=ErrorCode.ENGINE_ERROR, error_message="down")
            if r.request_id.startswith("fail")
            else EngineResult(assessment=Assessment(rating="Safe", category="NA: None applying"))
            for r in batch
        ]


def _request(request_id: str) -> EngineRequest:
    from PIL import Image

    return EngineRequest(request_id, Image.new("RGB", (4, 4)), "p", ("NA: None applying",))


@pytest.fixture
def window() -> Iterator[tuple[_Engine, EngineWindow, list[int]]]:
    engine = _Engine()
    sizes: list[int] = []
    w = EngineWindow(
        engine,  # type: ignore[arg-type]  # a partial engine: classify is all the window calls
        batch_size=4,
        max_wait_ms=1,
        concurrency=2,
        timeout_s=10,
        retries=0,
        on_call=sizes.append,
    )
    yield engine, w, sizes
    engine.gate.set()
    w.close()


def test_the_engine_is_ready_once_it_has_given_a_model_answer(
    window: tuple[_Engine, EngineWindow, list[int]],
) -> None:
    engine, w, sizes = window
    telemetry = Telemetry()
    watch = EngineWatch(engine, w, telemetry.metrics)
    engine.ready = False
    assert watch.check() == Check(False, "loading the model")
    engine.ready = True
    assert watch.check() == Check(False, "warming up")
    engine.gate.set()
    w.submit(_request("fail-1")).result(5)
    assert not w.answered  # engine errors only: not an answer
    assert watch.check() == Check(False, "warming up")
    w.submit(_request("ok-1")).result(5)
    assert w.answered and watch.check() == Check(True, "answered")
    assert sizes == [1, 1]
    assert samples(telemetry)[("moderator_engine_ready", ())] == 1


def test_the_engine_is_not_ready_while_every_call_fails_for_too_long(
    window: tuple[_Engine, EngineWindow, list[int]],
) -> None:
    engine, w, _ = window
    now = [0.0]
    w.answers = AnswerClock(lambda: now[0])
    telemetry = Telemetry()
    watch = EngineWatch(engine, w, telemetry.metrics, failing_s=60)
    engine.gate.set()
    w.submit(_request("ok-1")).result(5)
    w.submit(_request("fail-1")).result(5)
    now[0] = 60.0
    assert watch.check() == Check(True, "answered")  # a minute of failures is tolerated
    now[0] = 61.0
    w.submit(_request("fail-2")).result(5)
    assert watch.check() == Check(False, "no model answer for 61 s: every engine call failed")
    assert samples(telemetry)[("moderator_engine_ready", ())] == 0
    w.submit(_request("ok-2")).result(5)
    assert watch.check() == Check(True, "answered")


def test_busy_ratio_is_the_share_of_engine_time_since_the_last_scrape(
    window: tuple[_Engine, EngineWindow, list[int]],
) -> None:
    engine, w, _ = window
    telemetry = Telemetry()
    watch = EngineWatch(engine, w, telemetry.metrics)
    telemetry.on_scrape(watch.collect)
    future = w.submit(_request("ok"))
    time.sleep(0.3)  # one of two workers busy the whole time
    ratio = samples(telemetry)[("moderator_engine_busy_ratio", ())]
    assert 0.3 <= ratio <= 0.55
    engine.gate.set()
    future.result(5)
    assert w.busy_seconds >= 0.25
    time.sleep(0.2)
    assert samples(telemetry)[("moderator_engine_busy_ratio", ())] < 0.1  # idle since
