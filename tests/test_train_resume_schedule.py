"""A run resumed with a later end (`max_steps` raised) runs its first step at the rate of the
schedule stretched to that end, not at the rate the checkpoint's optimizer stored (0 at the end
of a cosine: a step that learned nothing)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest

from tests.finetune_fixtures import make_dataset, run_config
from tests.policy_fixtures import clear_moderator_env

pytestmark = pytest.mark.transformers

torch = pytest.importorskip("torch", reason="needs the transformers extra (torch)")
pytest.importorskip("transformers", reason="needs the transformers extra")
pytest.importorskip("peft", reason="needs the train extra (peft)")

from moderator.training.finetune import rundir  # noqa: E402
from moderator.training.finetune.schedule import apply_schedule  # noqa: E402

PEAK = 2e-4


def cosine(step: int, total: int) -> float:
    """transformers' cosine factor without warm-up."""
    return 0.5 * (1.0 + math.cos(math.pi * step / total))


def test_the_optimizer_gets_the_rate_of_the_step_the_scheduler_stands_at() -> None:
    from transformers import get_cosine_schedule_with_warmup

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([weight], lr=PEAK)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, 6)
    state = scheduler.state_dict()
    state["last_epoch"], state["_last_lr"] = 4, [0.0]  # a 4-step run's checkpoint, resumed
    scheduler.load_state_dict(state)
    optimizer.param_groups[0]["lr"] = 0.0  # what the 4-step schedule left in the optimizer
    assert apply_schedule(optimizer, scheduler) == [pytest.approx(PEAK * cosine(4, 6))]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(PEAK * 0.25)
    assert scheduler.get_last_lr() == [pytest.approx(PEAK * 0.25)]
    assert apply_schedule(optimizer, object()) is None  # not a LambdaLR: left alone


def test_raising_max_steps_stretches_the_schedule_from_the_first_resumed_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moderator.dev.tiny.checkpoint import make_tiny
    from moderator.training.finetune.trainer import train

    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    tiny = make_tiny(tmp_path / "tiny", "qwen2-vl")
    data = make_dataset(tmp_path / "data")
    config = run_config(tiny, data, tmp_path / "run", max_steps=4, save_steps=1, learning_rate=PEAK)
    config = config.model_copy(update={"lr_scheduler": "cosine"})
    train(config, stderr=io.StringIO())
    stderr = io.StringIO()
    train(config.model_copy(update={"max_steps": 6}), resume="latest", stderr=stderr)
    log = rundir.read_log(tmp_path / "run")
    rates = {e["step"]: e["learning_rate"] for e in log if "learning_rate" in e}
    assert rates[5] == pytest.approx(PEAK * cosine(4, 6))  # was 0.0: the old schedule's end
    assert rates[6] == pytest.approx(PEAK * cosine(5, 6))
    assert "step 5/6" in stderr.getvalue() and "lr 5.0e-05" in stderr.getvalue()
    four = (tmp_path / "run" / "checkpoint-4" / "adapter_model.safetensors").read_bytes()
    five = (tmp_path / "run" / "checkpoint-5" / "adapter_model.safetensors").read_bytes()
    assert four != five  # the first resumed step learned
