"""Ctrl-C during the built-in evaluation after training says that the model is saved and that
`--resume` runs the evaluation; `--resume` then does."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from tests.finetune_fixtures import make_dataset, run_config
from tests.policy_fixtures import clear_moderator_env

pytest.importorskip("torch", reason="needs the transformers extra (torch)")
pytest.importorskip("peft", reason="needs the train extra (peft)")

from moderator.dev.tiny.checkpoint import make_tiny  # torch checked first
from moderator.training.finetune import trainer

pytestmark = pytest.mark.transformers


def test_ctrl_c_in_the_evaluation_names_the_command_that_finishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    base = make_tiny(tmp_path / "tiny", "qwen2-vl")
    data = make_dataset(tmp_path / "data", eval_split=True)
    config = run_config(base, data, tmp_path / "run", max_steps=2, save_steps=2, eval={})
    calls: list[Path] = []

    def interrupted(run: Path, inputs: Any) -> Path:
        calls.append(run)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "evaluate", interrupted)
    stderr = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config, stderr=stderr, config_file=Path("train.yaml"))
    run = tmp_path / "run"
    assert (
        f"train: interrupted during the evaluation of the trained model; the model is saved in "
        f"{run / 'final'}: run the evaluation with `moderator train --config train.yaml --resume`"
    ) in stderr.getvalue()
    monkeypatch.setattr(trainer, "evaluate", lambda run, inputs: calls.append(run) or run / "eval")
    stderr = io.StringIO()
    result = trainer.train(config, resume="latest", stderr=stderr)
    assert "the evaluation of the trained model did not finish: running it" in stderr.getvalue()
    assert calls == [run, run] and result.report == run / "eval"


def test_the_stop_line_says_what_stops_at_once_for_each_signal() -> None:
    import signal

    from moderator.training.finetune.stop import GracefulStop

    for number, again in (
        (signal.SIGTERM, "send SIGTERM again"),
        (signal.SIGINT, "press Ctrl-C again"),
    ):
        stream = io.StringIO()
        GracefulStop(stream).handle(number, None)
        name = signal.Signals(number).name
        assert stream.getvalue() == (
            f"train: {name}: stopping after step 1, with a checkpoint ({again} to stop at once, "
            "losing the steps since the last checkpoint)\n"
        )
