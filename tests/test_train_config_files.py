"""What `moderator train --config` refuses in the files it reads: a key given twice in the YAML
file (PyYAML would keep the last one without a word), and a split present both as NAME.json and
NAME.jsonl (either could be the split)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moderator.cli.main import main
from moderator.errors import ConfigError
from moderator.training.finetune.config import load_config, parse_config
from moderator.training.finetune.inputs import check_inputs
from tests.finetune_fixtures import make_dataset
from tests.policy_fixtures import clear_moderator_env
from tests.test_finetune_config import fake_checkpoint


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


def required(tmp_path: Path) -> dict[str, str]:
    return {
        "base_model": str(fake_checkpoint(tmp_path / "base")),
        "dataset": str(make_dataset(tmp_path / "data", eval_split=True)),
        "output_dir": str(tmp_path / "run"),
    }


def test_a_key_given_twice_is_refused_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cpu.yaml"
    path.write_text(yaml.safe_dump(required(tmp_path)) + "max_steps: 4\nmax_steps: 6\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"train config {path} line 5: duplicate key 'max_steps'"
    nested = yaml.safe_dump(required(tmp_path)) + "lora:\n  r: 8\n  alpha: 16\n  r: 4\n"
    path.write_text(nested)
    with pytest.raises(ConfigError, match=r"line 7: duplicate key 'r'$"):
        load_config(path)
    assert main(["train", "--config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"moderator: train config {path} line 7: duplicate key 'r'\n"
    )


def test_a_key_given_once_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "cpu.yaml"
    path.write_text(yaml.safe_dump({**required(tmp_path), "max_steps": 4}))
    assert load_config(path).max_steps == 4


@pytest.mark.parametrize("split", ["train", "eval"])
def test_a_split_in_both_formats_is_refused(tmp_path: Path, split: str) -> None:
    config = parse_config(required(tmp_path), "x")
    data = tmp_path / "data"
    (data / f"{split}.jsonl").write_text((data / f"{split}.json").read_text())
    with pytest.raises(ConfigError) as caught:
        check_inputs(config)
    assert str(caught.value) == (
        f"dataset: {data.resolve()} has both {split}.json and {split}.jsonl: a split is one "
        f"file, {split}.json or {split}.jsonl; remove or rename the other"
    )
    (data / f"{split}.json").unlink()
    assert check_inputs(config).train.name.startswith("train.json")
