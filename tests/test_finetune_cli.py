"""`moderator train` on the command line: configuration errors are one line and exit 2, a run
prints where its model is, `train merge` hands its arguments to the merge command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from moderator.cli.main import main
from tests.finetune_fixtures import make_dataset
from tests.policy_fixtures import clear_moderator_env


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


def write_config(tmp_path: Path, **values: object) -> Path:
    base = tmp_path / "base"
    base.mkdir(exist_ok=True)
    (base / "config.json").write_text(
        json.dumps({"architectures": ["LlavaOnevisionForConditionalGeneration"]})
    )
    for name in ("model.safetensors", "tokenizer.json"):  # present, enough for the checks
        (base / name).write_bytes(b"")
    doc = {
        "base_model": str(base),
        "dataset": str(make_dataset(tmp_path / "data")),
        "output_dir": str(tmp_path / "run"),
        **values,
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("values", "line"),
    [
        ({"lora": {"rank": 8}}, "lora.rank: unknown key"),
        ({"dataset": "gone"}, "dataset: no dataset directory or file at "),
        ({"arch": "qwen2-vl"}, "arch: qwen2-vl, but base_model "),
        ({"epochs": -1}, "epochs: Input should be greater than 0"),
    ],
)
def test_configuration_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], values: dict[str, object], line: str
) -> None:
    config = write_config(tmp_path, **values)
    assert main(["train", "--config", str(config)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("moderator: ")
    assert line in captured.err


def test_train_needs_a_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train"]) == 2
    assert capsys.readouterr().err == "moderator: train: --config FILE is required\n"


def test_resume_without_a_checkpoint_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    assert main(["train", "--config", str(config), "--resume"]) == 2
    assert "--resume: " in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--resume", str(tmp_path / "nope")]) == 2
    assert "--resume: no checkpoint directory at " in capsys.readouterr().err


def test_merge_gets_its_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import moderator.training.finetune.merge as merge

    seen: list[argparse.Namespace] = []

    def fake_cmd_merge(args: argparse.Namespace) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr(merge, "cmd_merge", fake_cmd_merge)
    assert main(["train", "merge", "runs/a", "--out", "merged", "--base", "base"]) == 0
    assert (seen[0].source, seen[0].out, seen[0].base) == (
        Path("runs/a"),
        Path("merged"),
        Path("base"),
    )
    assert main(["train", "merge", "runs/a", "--out", "merged"]) == 0
    assert seen[1].base is None
    with pytest.raises(SystemExit) as exited:  # --out is required: a usage error
        main(["train", "merge", "runs/a"])
    assert exited.value.code == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.transformers
def test_a_run_prints_where_its_model_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch", reason="needs the transformers extra (torch)")
    pytest.importorskip("peft", reason="needs the train extra (peft)")
    from moderator.dev.tiny.checkpoint import make_tiny

    base = make_tiny(tmp_path / "tiny", "qwen2-vl")
    config = write_config(
        tmp_path,
        base_model=str(base),
        max_steps=1,
        logging_steps=1,
        batch_size=2,
        device="cpu",
        threads=1,
        eval={"enabled": False},
    )
    assert main(["train", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"final: {(tmp_path / 'run' / 'final').resolve()}\n"
    assert "train: step 1/1 (100%)" in captured.err
    assert (tmp_path / "run" / "final" / "adapter_config.json").is_file()
