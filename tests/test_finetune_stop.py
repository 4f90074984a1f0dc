"""Stopping a run: the first Ctrl-C (SIGINT) or SIGTERM saves a checkpoint after the running
step and stops (exit 128 + the signal), `--resume` goes on from there; a second Ctrl-C stops at
once with one line naming the checkpoint to resume from; a checkpoint of another kind of run is
refused in one line."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from moderator.cli.main import main
from moderator.training.finetune import rundir
from tests.finetune_fixtures import make_dataset
from tests.policy_fixtures import clear_moderator_env

pytestmark = pytest.mark.transformers

pytest.importorskip("torch", reason="needs the transformers extra (torch)")
pytest.importorskip("peft", reason="needs the train extra (peft)")

from moderator.dev.tiny.checkpoint import make_tiny  # noqa: E402  # torch checked first
from moderator.training.finetune.progress import RunLog  # noqa: E402
from moderator.training.finetune.stop import GracefulStop  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (not xdist's)
    yield
    for number, handler in handlers.items():  # whatever a failing test left behind
        signal.signal(number, handler)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny-stop") / "qwen2-vl", "qwen2-vl")


def write_config(tmp_path: Path, base: Path, **values: Any) -> Path:
    doc = {
        "base_model": str(base),
        "dataset": str(make_dataset(tmp_path / "data")),
        "output_dir": "run",
        "max_steps": 5,
        "batch_size": 2,
        "gradient_accumulation_steps": 1,
        "logging_steps": 1,
        "device": "cpu",
        "threads": 1,
        "eval": {"enabled": False},
        **values,
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def signal_during_step(monkeypatch: pytest.MonkeyPatch, step: int, times: int) -> list[bool]:
    """Make the run receive SIGINT `times` times as optimizer step `step` begins, as a user
    pressing Ctrl-C then would; clear the returned flag to stop that."""
    armed = [True]

    def fake_ctrl_c_on_step_begin(
        self: RunLog, args: Any, state: Any, control: Any, **_: Any
    ) -> None:
        if armed[0] and state.global_step == step - 1:
            for _ in range(times):
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(RunLog, "on_step_begin", fake_ctrl_c_on_step_begin, raising=False)
    return armed


def logged_steps(run: Path) -> list[int]:
    return [entry["step"] for entry in rundir.read_log(run) if "loss" in entry]


def test_ctrl_c_saves_a_checkpoint_after_the_step_and_resume_goes_on(
    tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, base, save_steps=100)  # no checkpoint of its own before 5
    armed = signal_during_step(monkeypatch, 3, times=1)
    assert main(["train", "--config", str(config)]) == 130
    out, err = capsys.readouterr()
    assert out == ""  # no final/ to name
    run = tmp_path / "run"
    assert "train: SIGINT: stopping after step 3, with a checkpoint" in err
    assert "train: stopped, 3 steps in " in err
    assert err.splitlines()[-1] == (
        f"train: stopped by SIGINT at step 3; checkpoint-3 is saved in {run}: continue with "
        f"`moderator train --config {config} --resume`"
    )
    assert rundir.latest_checkpoint(run) == run / "checkpoint-3"
    assert not (run / "final").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler given back
    armed[0] = False
    assert main(["train", "--config", str(config), "--resume"]) == 0
    assert "train: done, 2 steps (steps 4-5) in " in capsys.readouterr().err
    assert logged_steps(run) == [1, 2, 3, 4, 5]
    assert (run / "final" / "adapter_config.json").is_file()


def test_a_second_ctrl_c_stops_at_once_and_names_the_checkpoint(
    tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, base, save_steps=2)
    signal_during_step(monkeypatch, 4, times=2)
    assert main(["train", "--config", str(config)]) == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "train: interrupted during step 4; the newest checkpoint is checkpoint-2 (the 1 step(s) "
        f"after it are lost): continue from it with `moderator train --config {config} --resume`"
    )
    assert [p.name for _, p in rundir.checkpoints(tmp_path / "run")] == ["checkpoint-2"]


def test_a_run_stopped_before_its_first_checkpoint_starts_over(
    tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, base, max_steps=2, save_steps=100)
    armed = signal_during_step(monkeypatch, 2, times=2)
    assert main(["train", "--config", str(config)]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "train: interrupted during step 2, before any checkpoint was saved; a new run starts over"
    )
    assert logged_steps(tmp_path / "run") == [1]
    armed[0] = False
    assert main(["train", "--config", str(config)]) == 0
    assert logged_steps(tmp_path / "run") == [1, 2]  # step 1 once: the old log was dropped


def test_sigterm_asks_for_a_stop_too_and_an_ignored_sigint_stays_ignored(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import io

    import moderator.training.finetune.trainer as trainer
    from moderator.training.finetune.trainer import TrainResult

    stream = io.StringIO()
    stop = GracefulStop(stream)
    # What was there before (an earlier test in this process may have left handlers): the stop
    # must put back exactly that.
    before_term = signal.getsignal(signal.SIGTERM)
    before_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a shell's background job
    try:
        with stop.installed():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == stop.handle
            stop.handle(signal.SIGTERM, None)
            with pytest.raises(KeyboardInterrupt):
                stop.handle(signal.SIGINT, None)  # the second signal: at once
        assert signal.getsignal(signal.SIGTERM) is before_term
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before_int)
    assert (stop.requested, stop.name()) == (True, "SIGTERM")
    assert stream.getvalue().startswith("train: SIGTERM: stopping after step 1, with a checkpoint")

    def fake_train(*_: Any, **__: Any) -> TrainResult:
        return TrainResult(tmp_path, None, 3, None, "SIGTERM")

    monkeypatch.setattr(trainer, "train", fake_train)
    (tmp_path / "t.yaml").write_text(
        yaml.safe_dump({"base_model": "b", "dataset": "d", "output_dir": "o"})
    )
    assert main(["train", "--config", str(tmp_path / "t.yaml")]) == 128 + signal.SIGTERM
    assert capsys.readouterr().out == ""


def test_a_checkpoint_of_another_model_is_one_line(
    tmp_path: Path, base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = make_tiny(tmp_path / "ov", "llava-onevision")
    checkpoint = rundir.write_config(tmp_path / "run", "{}").parent / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / rundir.TRAINER_STATE).write_text(json.dumps({"global_step": 2}))
    (checkpoint / rundir.ADAPTER_CONFIG).write_text(
        json.dumps({"r": 16, "base_model_name_or_path": str(other)})
    )
    (checkpoint / "adapter_model.safetensors").write_bytes(b"")
    config = write_config(tmp_path, base)
    assert main(["train", "--config", str(config), "--resume", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"moderator: --resume: {checkpoint} was trained from a "
        "LlavaOnevisionForConditionalGeneration, but base_model is a "
        "Qwen2VLForConditionalGeneration\n"
    )
