"""Ctrl-C during an engine run (`eval`, `dataset rationales`): no more samples go in, the engine
call in progress ends, then the command exits 130 with one line, never under a running call
(which aborted the process with SIGABRT when the engine was torch)."""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from moderator.engine.base import EngineRequest, EngineResult
from moderator.engine.window import EngineWindow
from moderator.errors import ErrorCode
from moderator.events.verdict import ModelInfo
from moderator.fetch.decode import DecodeLimits
from moderator.settings import Settings
from moderator.training.dataset import write_dataset
from moderator.training.evaluate import EngineRunner, ImageSource, Job
from moderator.training.interrupt import stopping_line
from moderator.training.run_progress import RunProgress
from tests.finetune_fixtures import make_samples
from tests.policy_fixtures import clear_moderator_env

CALL_S = 0.6


class SlowEngine:
    """An engine whose every call takes CALL_S; records when the first starts and ends."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.calls_ended = 0

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(engine="slow", name="slow", categories=(), smoke_test=True)

    @property
    def input_size(self) -> int:
        return 64

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        self.started.set()
        time.sleep(CALL_S)
        self.calls_ended += 1
        return [EngineResult(error_code=ErrorCode.UNPARSEABLE_OUTPUT) for _ in batch]

    def close(self) -> None:
        pass


@pytest.fixture
def sigint_handled() -> Iterator[None]:
    """Python's own SIGINT handler (a test worker may ignore SIGINT): Ctrl-C raises."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_handled")
def test_runner_waits_for_the_call_in_progress_on_ctrl_c(tmp_path: Path) -> None:
    dataset = tmp_path / "data.json"
    samples = make_samples(tmp_path, 6)
    write_dataset(dataset, samples)
    engine = SlowEngine()
    window = EngineWindow(
        engine, batch_size=1, max_wait_ms=0, concurrency=1, timeout_s=30, retries=0
    )
    runner = EngineRunner(
        window,
        ImageSource(dataset, Settings()),
        limits=DecodeLimits.from_settings(Settings().fetch),
        input_size=64,
        loaders=2,
        max_in_flight=4,
        label="rationales",
    )
    seen: list[str] = []

    main = threading.main_thread().ident
    assert main is not None

    def ctrl_c() -> None:
        engine.started.wait(10)
        signal.pthread_kill(main, signal.SIGINT)  # as a Ctrl-C: wakes a blocked wait

    threading.Thread(target=ctrl_c, daemon=True).start()
    stream = io.StringIO()
    jobs = [Job(s.id, s.image, "p") for s in samples]
    with pytest.raises(KeyboardInterrupt):
        try:
            runner.run(jobs, lambda job, _: seen.append(job.id), RunProgress(stream, "rationales"))
        finally:
            ended_before_raise = engine.calls_ended
    assert ended_before_raise >= 1  # the call in progress ended before the interrupt went on
    assert ended_before_raise < len(jobs)  # and no more went in
    lines = stream.getvalue().splitlines()
    assert stopping_line("rationales") in lines
    # the last status line counts what was done, not the 0 of the line before the stop
    after = lines[lines.index(stopping_line("rationales")) + 1 :]
    assert [line for line in after if line.startswith("rationales: ") and "/6 samples" in line]
    closed = window.submit(EngineRequest("late", None, "p", ()))  # type: ignore[arg-type]
    assert closed.result().result.error_message == "engine window closed"


def _wait_for(path: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    """Until `text` is in the file or the process ended (30 s at most)."""
    until = time.monotonic() + 30
    while time.monotonic() < until and process.poll() is None:
        if text in path.read_text(encoding="utf-8", errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {text!r}: {path.read_text(errors='replace')}")


@pytest.mark.parametrize("command", ["eval", "rationales"])
def test_ctrl_c_exits_130_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    clear_moderator_env(monkeypatch)
    samples = make_samples(tmp_path, 4)
    write_dataset(tmp_path / "data.json", [dataclasses.replace(s, rationale=None) for s in samples])
    argv = [sys.executable, "-m", "moderator.cli.main"]
    if command == "eval":
        argv += ["eval", "--dataset", "data.json", "--report", "report", "--engine", "fake"]
    else:
        argv += ["dataset", "rationales", "data.json", "out.json", "--engine", "fake"]
    env = {
        **os.environ,
        "MODERATOR_ENGINE__FAKE__LATENCY_MS": str(int(CALL_S * 1000)),
        "MODERATOR_ENGINE__BATCH_SIZE": "1",
        "MODERATOR_ENGINE__CONCURRENCY": "1",
    }
    err = tmp_path / "stderr.txt"
    with err.open("wb") as stream:
        process = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stream,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            _wait_for(err, "engine ready", process)
            time.sleep(CALL_S / 2)  # the first sample's call is in progress
            process.send_signal(signal.SIGINT)
            assert process.wait(30) == 130
        finally:
            if process.poll() is None:
                process.kill()
    label = "eval" if command == "eval" else "rationales"
    text = err.read_text(encoding="utf-8")
    assert stopping_line(label) in text.splitlines()
    assert "Traceback" not in text


@pytest.mark.usefixtures("sigint_handled")
def test_ctrl_c_during_the_warm_up_waits_for_it_too(capsys: pytest.CaptureFixture[str]) -> None:
    from moderator.training.evaluate import Engines

    settings = Settings.model_validate(
        {"engine": {"kind": "fake", "fake": {"latency_ms": CALL_S * 1000}}}
    )
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(CALL_S / 3, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        Engines.start(settings, "p", label="eval")
    assert time.monotonic() - started >= CALL_S * 0.9  # the warm-up call ended first
    assert stopping_line("eval") in capsys.readouterr().err.splitlines()
