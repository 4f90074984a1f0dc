"""After a Ctrl-C, the last status line of an engine run (`eval`, `dataset rationales`) shows
where the run stopped: the samples the engine answered, not the ones the closing window gave
back unsent (they are neither done nor errors, and nobody records an outcome for them), and no
ETA."""

from __future__ import annotations

import io
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from moderator.engine.base import EngineRequest, EngineResult
from moderator.engine.window import EngineWindow
from moderator.events.verdict import Assessment, ModelInfo
from moderator.fetch.decode import DecodeLimits
from moderator.settings import Settings
from moderator.training.dataset import write_dataset
from moderator.training.evaluate import EngineRunner, ImageSource, Job
from moderator.training.interrupt import stopping_line
from moderator.training.run_progress import RunProgress
from tests.finetune_fixtures import make_samples
from tests.test_eval_interrupt import sigint_handled  # noqa: F401  # a fixture

CALL_S = 0.4
SAMPLES = 8


class AnsweringEngine:
    """An engine whose every call takes CALL_S and answers Safe."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.answered = 0

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(engine="slow", name="slow", categories=(), smoke_test=True)

    @property
    def input_size(self) -> int:
        return 64

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        self.started.set()
        time.sleep(CALL_S)
        self.answered += len(batch)
        answer = Assessment(rating="Safe", category="NA: None applying")
        return [EngineResult(assessment=answer) for _ in batch]

    def close(self) -> None:
        pass


@pytest.mark.usefixtures("sigint_handled")
def test_the_last_line_counts_the_answered_samples_only(tmp_path: Path) -> None:
    dataset = tmp_path / "data.json"
    samples = make_samples(tmp_path, SAMPLES)
    write_dataset(dataset, samples)
    engine = AnsweringEngine()
    window = EngineWindow(
        engine, batch_size=1, max_wait_ms=0, concurrency=1, timeout_s=30, retries=0
    )
    runner = EngineRunner(
        window,
        ImageSource(dataset, Settings()),
        limits=DecodeLimits.from_settings(Settings().fetch),
        input_size=64,
        loaders=2,
        max_in_flight=6,  # several requests queued in the window when Ctrl-C comes
        label="eval",
    )
    main = threading.main_thread().ident
    assert main is not None

    def ctrl_c() -> None:
        engine.started.wait(10)
        time.sleep(CALL_S / 2)  # the first call in progress, more requests queued
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=ctrl_c, daemon=True).start()
    stream = io.StringIO()
    recorded: list[str] = []
    jobs = [Job(s.id, s.image, "p") for s in samples]
    with pytest.raises(KeyboardInterrupt):
        runner.run(jobs, lambda job, _: recorded.append(job.id), RunProgress(stream, "eval"))
    answered = engine.answered
    assert 1 <= answered < SAMPLES
    assert len(recorded) == answered  # no outcome for a request the engine never saw
    lines = stream.getvalue().splitlines()
    last = lines[lines.index(stopping_line("eval")) + 1 :][-1]
    pct = f"{100 * answered / SAMPLES:.0f}%"
    assert last.startswith(f"eval: {answered}/{SAMPLES} samples ({pct}), errors 0, "), last
    assert "ETA" not in last and last.endswith(" s")
