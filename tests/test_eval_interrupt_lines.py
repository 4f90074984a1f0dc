"""What each offline command says when Ctrl-C stops it: what was kept, and the command that
continues where there is one (`eval`: nothing kept; `dataset rationales`: the journal, rerun to
continue, with a last status line that counts what was done; `scan`: the verdicts written)."""

from __future__ import annotations

import io
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from moderator.cli import dataset_rationales
from moderator.cli import eval as eval_cli
from moderator.cli.main import main
from moderator.engine.base import EngineRequest, EngineResult
from moderator.engine.window import EngineWindow
from moderator.errors import ErrorCode
from moderator.events.verdict import ModelInfo
from moderator.fetch.decode import DecodeLimits
from moderator.pipeline.scan import Scan
from moderator.policy.bundled import write_default_policy
from moderator.settings import Settings
from moderator.training.dataset import write_dataset
from moderator.training.evaluate import EngineRunner, ImageSource, Job
from moderator.training.interrupt import stopping_line
from moderator.training.run_progress import RunProgress
from tests.finetune_fixtures import make_samples
from tests.policy_fixtures import clear_moderator_env
from tests.test_training_eval import make_dataset


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


def ctrl_c(*_: Any, **__: Any) -> Any:
    raise KeyboardInterrupt


def test_eval_says_nothing_was_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path / "data", 2)
    monkeypatch.setattr(eval_cli, "_from_engine", ctrl_c)
    argv = ["eval", "--dataset", str(dataset), "--engine", "fake", "--report", "r"]
    assert main(argv) == 130
    assert capsys.readouterr().err == (
        "moderator: eval: interrupted: nothing is kept (no report written in r); run the "
        "command again to evaluate from the start\n"
    )


def test_rationales_say_what_the_journal_kept_and_how_to_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path / "data", 4)
    argv = ["dataset", "rationales", str(dataset), "out.json", "--engine", "fake"]
    assert main([*argv, "--limit", "2"]) == 0  # two outcomes journalled
    capsys.readouterr()
    monkeypatch.setattr(dataset_rationales, "_ask", ctrl_c)
    assert main(argv) == 130
    assert capsys.readouterr().err == (
        "moderator: rationales: interrupted: 2 sample outcome(s) kept in "
        "out.json.progress.jsonl; run the same command again to continue (it skips them, then "
        "writes out.json)\n"
    )


def test_scan_says_which_verdicts_were_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(folder / "a.png")
    write_default_policy(tmp_path / "policies")
    monkeypatch.setattr(Scan, "run", ctrl_c)
    argv = ["scan", str(folder), "--engine", "fake", "--output", "v.jsonl"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert (
        "scan: interrupted: the 0 verdict(s) written to v.jsonl are kept; a scan does not "
        "resume: run it again to judge every object"
    ) in err


class SlowEngine:
    def __init__(self) -> None:
        self.started = threading.Event()

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(engine="slow", name="slow", categories=(), smoke_test=True)

    @property
    def input_size(self) -> int:
        return 64

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        self.started.set()
        time.sleep(0.4)
        return [EngineResult(error_code=ErrorCode.UNPARSEABLE_OUTPUT) for _ in batch]

    def close(self) -> None:
        pass


@pytest.fixture
def sigint_handled() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_handled")
def test_the_last_status_line_counts_what_was_done(tmp_path: Path) -> None:
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
    main_thread = threading.main_thread().ident
    assert main_thread is not None

    def press() -> None:
        engine.started.wait(10)
        signal.pthread_kill(main_thread, signal.SIGINT)

    threading.Thread(target=press, daemon=True).start()
    stream = io.StringIO()  # not a terminal: a status line only every 5 s, and at the end
    jobs = [Job(s.id, s.image, "p") for s in samples]
    with pytest.raises(KeyboardInterrupt):
        runner.run(jobs, lambda *_: None, RunProgress(stream, "rationales"))
    lines = stream.getvalue().splitlines()
    after = lines[lines.index(stopping_line("rationales")) + 1 :]
    assert [line for line in after if line.startswith("rationales: ") and "/6 samples" in line]
