"""The model card of a fine-tuned checkpoint: base model, licence, data, config, evaluation,
the revision, and what the engines read from it. No model is loaded: the weights are bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from moderator.engine.smoke import CARD, MARKER, card_identity
from moderator.errors import ConfigError
from moderator.training.dataset import Sample, write_dataset
from moderator.training.finetune.card import (
    CardInputs,
    adapter_digest,
    base_facts,
    base_license,
    front_matter,
    weights_revision,
    write_card,
)
from moderator.training.finetune.inputs import sha256_file

NA = "NA: None applying"
O1 = "O1: Hate, Humiliation, Harassment"


def fake_checkpoint(directory: Path, weights: bytes = b"weights") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"architectures": ["Qwen2VLForX"]}))
    (directory / "model.safetensors").write_bytes(weights)
    return directory


def samples(n: int, prefix: str) -> list[Sample]:
    return [
        Sample(
            id=f"{prefix}{i}",
            image=f"images/{prefix}{i}.png",
            rating="Unsafe" if i % 2 else "Safe",
            category=O1 if i % 2 else NA,
        )
        for i in range(n)
    ]


def make_run(root: Path, base: Path) -> Path:
    data = root / "data"
    data.mkdir()
    write_dataset(data / "train.json", samples(5, "t"))
    write_dataset(data / "eval.json", samples(3, "e"))
    write_dataset(data / "test.json", samples(2, "x"))
    run = root / "run"
    run.mkdir()
    config = {
        "base_model": str(base),
        "dataset": str(data),
        "method": "lora",
        "epochs": 2.0,
        "eval": {"enabled": None, "every_steps": None, "split": "eval"},
        "resolved": {"base_model": str(base)},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def metrics(balanced: float, model: str) -> dict[str, Any]:
    return {
        "n": 3,
        "balanced_accuracy": balanced,
        "recall": balanced,
        "pes": balanced,
        "unparseable": 0,
        "header": {"dataset": "data/eval.json", "model": model},
    }


def write_metrics(directory: Path, document: dict[str, Any]) -> None:
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps(document))


ADAPTER = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}


def test_the_card_records_base_data_config_and_evaluation(tmp_path: Path) -> None:
    base = fake_checkpoint(tmp_path / "base")
    (base / "README.md").write_text("---\nlicense: apache-2.0\ntags: [x]\n---\n# Base\n")
    run = make_run(tmp_path, base)
    write_metrics(run / "eval", metrics(0.75, "run"))
    write_metrics(run / "eval-base", metrics(0.5, "base"))
    final = run / "final"
    final.mkdir()
    (final / "adapter_config.json").write_text(json.dumps(ADAPTER))
    (final / "adapter_model.safetensors").write_bytes(b"adapter")
    out = fake_checkpoint(tmp_path / "merged", b"tuned")
    card = write_card(out, CardInputs("acme-guard", base, run, final, ADAPTER))

    assert json.loads((out / CARD).read_text()) == card
    assert (card["name"], card["revision"]) == ("acme-guard", weights_revision(out))
    assert card["base_model"] == {
        "path": str(base),
        "name": "base",
        "revision": None,
        "license": "apache-2.0",
        "smoke_test": False,
    }
    splits = card["data"]["splits"]
    assert {k: v["samples"] for k, v in splits.items()} == {"train": 5, "eval": 3, "test": 2}
    assert splits["eval"]["sha256"] == sha256_file(tmp_path / "data" / "eval.json")
    assert card["training"]["config"]["epochs"] == 2.0
    assert card["training"]["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert card["training"]["adapter_sha256"] == adapter_digest(final)
    (final / "adapter_model.safetensors").write_bytes(b"retrained")
    assert card["training"]["adapter_sha256"] != adapter_digest(final)
    evaluation = card["evaluation"]
    assert evaluation["metrics"]["balanced_accuracy"] == 0.75
    assert evaluation["base_metrics"]["balanced_accuracy"] == 0.5
    assert evaluation["verdict"].startswith("B is better: balanced accuracy")

    readme = (out / "README.md").read_text()
    front = front_matter(out / "README.md")
    assert front["license"] == "apache-2.0" and front["base_model"] == "base"
    assert "lora" in front["tags"]
    assert f"`acme-guard` at revision `{card['revision']}`" in readme
    assert "| eval | eval.json | 3 |" in readme
    assert "| balanced_accuracy | 0.7500 | 0.5000 |" in readme
    assert "SMOKE-TEST" not in readme
    assert card_identity(out).name == "acme-guard"


def test_a_licence_that_cannot_be_found_is_said_to_be_unknown(tmp_path: Path) -> None:
    base = fake_checkpoint(tmp_path / "base")
    assert base_license(base) == "unknown"
    (base / "README.md").write_text("# No front matter\nlicense: mit\n")
    assert base_license(base) == "unknown"
    (base / "config.json").write_text(json.dumps({"license": "llama3.1"}))
    assert base_license(base) == "llama3.1"
    (base / "README.md").write_text("---\nlicense: other\nlicense_name: tuda-guard\n---\n")
    assert base_license(base) == "other (tuda-guard)"

    plain = fake_checkpoint(tmp_path / "plain")
    (plain / MARKER).write_text("{}")
    out = fake_checkpoint(tmp_path / "out")
    (out / MARKER).write_text("{}")
    write_card(out, CardInputs("t", plain, None, plain, None))
    readme = (out / "README.md").read_text()
    assert "licence: unknown (not stated by the base model" in readme
    assert "**SMOKE-TEST MODEL**" in readme
    assert "Not evaluated yet" in readme and "Not recorded" in readme
    assert json.loads((out / CARD).read_text())["training"]["method"] == "full"


def test_a_hub_cache_base_is_named_by_its_repository_and_commit(tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--AIML-TUDA--QwenGuard-v1.2-3B" / "snapshots" / commit
    facts = base_facts(fake_checkpoint(snapshot))
    assert (facts["name"], facts["revision"]) == ("AIML-TUDA/QwenGuard-v1.2-3B", commit)
    tuned = fake_checkpoint(tmp_path / "tuned")
    (tuned / CARD).write_text(json.dumps({"name": "acme-v1", "revision": "abc123def456"}))
    assert (base_facts(tuned)["name"], base_facts(tuned)["revision"]) == ("acme-v1", "abc123def456")
    assert base_facts(None)["license"] == "unknown"


def test_the_revision_follows_the_weights(tmp_path: Path) -> None:
    one = weights_revision(fake_checkpoint(tmp_path / "a", b"one"))
    assert one == weights_revision(fake_checkpoint(tmp_path / "b", b"one"))
    assert one != weights_revision(fake_checkpoint(tmp_path / "c", b"two"))
    assert len(one) == 12 and int(one, 16) >= 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no weight files"):
        weights_revision(tmp_path / "empty")


@pytest.mark.parametrize(
    ("text", "problem"),
    [("{not json", "not a readable JSON model card"), ("[1, 2]", "not a model card")],
)
def test_an_unreadable_card_is_one_line(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / CARD).write_text(text)
    with pytest.raises(ConfigError) as caught:
        card_identity(tmp_path)
    assert problem in str(caught.value) and "\n" not in str(caught.value)
    assert str(tmp_path / CARD) in str(caught.value)


def test_a_card_without_name_or_revision_leaves_them_unset(tmp_path: Path) -> None:
    assert card_identity(tmp_path) == card_identity(tmp_path / "missing")
    (tmp_path / CARD).write_text(json.dumps({"name": "", "revision": 7}))
    identity = card_identity(tmp_path)
    assert (identity.name, identity.revision) == (None, None)
