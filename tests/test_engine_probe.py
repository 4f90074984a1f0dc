"""An idle pod's engine readiness after an outage: the warm-up requests come back while every
call has failed for too long and nothing else is waiting, and stop once the engine answers."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from moderator.engine.base import EngineRequest, EngineResult
from moderator.engine.fake import FakeEngine
from moderator.obs.engine import EngineWatch
from moderator.obs.telemetry import Telemetry
from moderator.service import _warm_up, build_pipeline
from moderator.settings import FakeEngineSettings
from tests.harness import settings_for, wait_for, write_policies

FAILING_S = 0.3
RETRY_S = 0.05


class _OutageEngine(FakeEngine):
    """A fake engine (test double) whose every call raises while `down` is set; it counts the
    calls it gets."""

    def __init__(self) -> None:
        super().__init__(FakeEngineSettings())
        self.down = threading.Event()
        self.calls = 0

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        self.calls += 1
        if self.down.is_set():
            raise ConnectionError("the model server went away")
        return super().classify(batch)


def test_an_idle_pod_probes_the_engine_back_to_ready_and_then_stops(tmp_path: Path) -> None:
    engine = _OutageEngine()
    pipeline = build_pipeline(settings_for(write_policies(tmp_path)), engine=engine)
    watch = EngineWatch(engine, pipeline.window, Telemetry().metrics, failing_s=FAILING_S)
    finished = threading.Event()
    keeper = threading.Thread(
        target=_warm_up,
        args=(pipeline, finished),
        kwargs={"retry_s": RETRY_S, "failing_s": FAILING_S},
        daemon=True,
    )
    keeper.start()
    try:
        wait_for(lambda: watch.check().ok, 10, "the warm-up's answer")
        warmed = engine.calls
        engine.down.set()
        failed = pipeline.window.submit(EngineRequest("e-1#0", _grey(), "p", ())).result(5)
        assert failed.result.error_code is not None  # the last traffic before going idle
        wait_for(lambda: not watch.check().ok, 5, "not ready after the outage")
        wait_for(lambda: engine.calls > warmed + 2, 5, "probes while idle and failing")
        engine.down.clear()
        wait_for(lambda: watch.check().ok, 5, "ready again without any traffic")
        settled = engine.calls
        threading.Event().wait(10 * RETRY_S)
        assert engine.calls == settled  # an engine that answers is left alone
    finally:
        finished.set()
        keeper.join(5)
        pipeline.close()


def test_no_probe_while_calls_fail_for_less_than_the_limit(tmp_path: Path) -> None:
    engine = _OutageEngine()
    pipeline = build_pipeline(settings_for(write_policies(tmp_path)), engine=engine)
    finished = threading.Event()
    keeper = threading.Thread(
        target=_warm_up,
        args=(pipeline, finished),
        kwargs={"retry_s": RETRY_S, "failing_s": 60.0},
        daemon=True,
    )
    keeper.start()
    try:
        wait_for(lambda: pipeline.window.answered, 10, "the warm-up's answer")
        engine.down.set()
        pipeline.window.submit(EngineRequest("e-1#0", _grey(), "p", ())).result(5)
        calls = engine.calls
        threading.Event().wait(10 * RETRY_S)
        assert engine.calls == calls
    finally:
        finished.set()
        keeper.join(5)
        pipeline.close()


def _grey() -> Image.Image:
    return Image.new("RGB", (32, 32), (127, 127, 127))
