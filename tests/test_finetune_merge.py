"""`moderator train merge`: a LoRA adapter folded into its tiny base loads in the transformers
engine and computes what the adapter model computed; the verdicts name the card's model and
revision; a full run is copied without its trainer state; bad input is one line."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from moderator.dev.tiny.checkpoint import make_tiny
from moderator.engine.guard.prompting import hf_messages
from moderator.engine.smoke import CARD, MARKER, card_identity
from moderator.errors import ConfigError
from moderator.settings import EngineSettings
from moderator.training.finetune.merge import SOURCE_MUST

pytestmark = pytest.mark.transformers

ARCHES = ("llava-onevision", "qwen2-vl", "qwen2.5-vl")
# The language model's projections, as a training run targets them (not the vision tower's).
TARGETS = r".*\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
PROMPT = "Assess the image against the policy.\nO1: Hate, Humiliation, Harassment: should not ..."


@pytest.fixture(scope="module")
def hf() -> Any:
    pytest.importorskip("torch", reason="needs the transformers extra (torch)")
    pytest.importorskip("peft", reason="needs the train extra (peft)")
    return pytest.importorskip("transformers", reason="needs the transformers extra")


@pytest.fixture(scope="module")
def tiny(hf: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-merge")
    return {arch: make_tiny(root / arch, arch) for arch in ARCHES}


def quiet_peft() -> Any:
    """peft asks transformers 5 an attribute it deprecated: their warning, not ours."""
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
    return context


def load_model(path: Path) -> Any:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)


def make_adapter(base: Path, out: Path, *, seed: int = 1) -> Path:
    """A LoRA adapter with random (non-zero) weights on `base`, saved as a run saves one."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    context = quiet_peft()
    try:
        config = LoraConfig(
            r=4,
            lora_alpha=16,
            target_modules=TARGETS,
            task_type="CAUSAL_LM",
            init_lora_weights=False,  # random B too: the adapter changes the model
        )
        model = get_peft_model(load_model(base), config)
    finally:
        context.__exit__(None, None, None)
    model.save_pretrained(out)
    return out


def engine_settings(model: Path, **transformers: Any) -> EngineSettings:
    return EngineSettings.model_validate(
        {
            "kind": "transformers",
            "model": str(model),
            "transformers": {"device": "cpu", "threads": 1, "warmup": False, **transformers},
            "generation": {"max_new_tokens": 80, "rationale_max_chars": 48},
        }
    )


def logits(model: Any, processor: Any) -> Any:
    """The model's logits on one image and the guard prompt, as the engine renders it."""
    import torch

    text = processor.apply_chat_template(
        hf_messages(PROMPT), add_generation_prompt=True, tokenize=False
    )
    image = Image.new("RGB", (64, 48), (200, 40, 90))
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits[0, -8:]


def weight_names(directory: Path) -> set[str]:
    from safetensors import safe_open

    names: set[str] = set()
    for file in directory.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            names |= set(handle.keys())
    return names


@pytest.mark.parametrize("arch", ARCHES)
def test_merged_lora_matches_the_adapter_model_and_names_itself(
    tiny: dict[str, Path], arch: str, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel

    from moderator.engine.factory import build_engine
    from moderator.engine.transformers.load import load
    from moderator.training.finetune.card import weights_revision
    from moderator.training.finetune.merge import merge_lora

    adapter = make_adapter(tiny[arch], tmp_path / "adapter")
    out = merge_lora(adapter, tmp_path / "guard-ft")

    loaded = load(engine_settings(out))  # the engine's own loader
    context = quiet_peft()
    try:
        peft_model = PeftModel.from_pretrained(load_model(tiny[arch]), adapter).eval()
    finally:
        context.__exit__(None, None, None)
    expected = logits(peft_model, loaded.processor)
    got = logits(loaded.model, loaded.processor)
    base = logits(load_model(tiny[arch]).eval(), loaded.processor)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert (base - expected).abs().max() > 1e-2  # the adapter changed the model

    # The standard layout: the base's class and parameter names, no LoRA tensors.
    config = json.loads((out / "config.json").read_text())
    assert (
        config["architectures"]
        == json.loads((tiny[arch] / "config.json").read_text())["architectures"]
    )
    assert weight_names(out) == weight_names(tiny[arch])
    for name in ("generation_config.json", "tokenizer.json", "chat_template.jinja", "README.md"):
        assert (out / name).is_file(), name
    assert (out / MARKER).is_file()  # tuned from random weights: still a smoke-test model

    card = json.loads((out / CARD).read_text())
    assert card["name"] == "guard-ft" and card["revision"] == weights_revision(out)
    assert card["training"]["method"] == "lora" and card["training"]["lora"]["r"] == 4
    engine = build_engine(engine_settings(out))
    try:
        assert (engine.info.name, engine.info.revision) == ("guard-ft", card["revision"])
        assert engine.info.smoke_test
    finally:
        engine.close()


def test_settings_revision_wins_and_a_plain_checkpoint_keeps_its_path(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    from moderator.engine.factory import build_engine
    from moderator.training.finetune.merge import merge_lora

    out = merge_lora(make_adapter(tiny["qwen2-vl"], tmp_path / "a"), tmp_path / "m", name="acme")
    engine = build_engine(engine_settings(out, revision="v7"))
    assert (engine.info.name, engine.info.revision) == ("acme", "v7")
    engine.close()
    plain = build_engine(engine_settings(tiny["qwen2-vl"]))
    assert (plain.info.name, plain.info.revision) == (str(tiny["qwen2-vl"]), None)
    plain.close()


def test_a_real_base_gives_no_smoke_test_marker(tiny: dict[str, Path], tmp_path: Path) -> None:
    from moderator.training.finetune.merge import merge_lora

    base = shutil.copytree(tiny["qwen2-vl"], tmp_path / "base")
    (base / MARKER).unlink()
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# A base\n")
    out = merge_lora(make_adapter(base, tmp_path / "adapter"), tmp_path / "m")
    assert not (out / MARKER).exists()
    card = json.loads((out / CARD).read_text())
    assert card["smoke_test"] is False and card["base_model"]["license"] == "apache-2.0"
    assert "license: apache-2.0" in (out / "README.md").read_text()


def make_run(root: Path, base: Path, final: Path | None = None) -> Path:
    """A run directory as `moderator train` leaves it (config.yaml, final/)."""
    run = root / "run-acme"
    run.mkdir()
    doc = {"base_model": str(base), "dataset": str(root / "data"), "method": "lora"}
    (run / "config.yaml").write_text(yaml.safe_dump(doc))
    if final is not None:
        shutil.copytree(final, run / "final")
    return run


def test_a_run_directory_merges_its_final_adapter_under_the_runs_name(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from moderator.cli.main import main

    adapter = make_adapter(tiny["qwen2-vl"], tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "org/not-here"  # the run's config names the base
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    run = make_run(tmp_path, tiny["qwen2-vl"], adapter)
    out = tmp_path / "served"
    assert main(["train", "merge", str(run), "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    card = json.loads((out / CARD).read_text())
    assert stdout.strip() == str(out)
    assert stderr.startswith(f"merge: {run} -> {out}: the adapter folded into the base, loaded")
    assert f"merged: run-acme@{card['revision']} (SMOKE-TEST" in stderr
    assert card["training"]["config"]["base_model"] == str(tiny["qwen2-vl"])
    assert card_identity(out).name == "run-acme"
    # Merging again replaces the earlier merge; the same weights keep the same revision.
    assert main(["train", "merge", str(run), "--out", str(out)]) == 0
    assert json.loads((out / CARD).read_text())["revision"] == card["revision"]
    # --name names the model in its card (and so in its verdicts) instead of the run.
    assert main(["train", "merge", str(run), "--out", str(out), "--name", "acme-guard"]) == 0
    assert card_identity(out).name == "acme-guard"


def test_a_full_run_is_copied_without_the_trainer_state(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    from moderator.training.finetune.merge import merge_lora

    run = make_run(tmp_path, tiny["qwen2.5-vl"], tiny["qwen2.5-vl"])
    for name in ("optimizer.pt", "scheduler.pt", "trainer_state.json", "rng_state.pth"):
        (run / "final" / name).write_bytes(b"state")
    out = merge_lora(run, tmp_path / "full")
    assert not {"optimizer.pt", "scheduler.pt", "trainer_state.json", "rng_state.pth"} & {
        p.name for p in out.iterdir()
    }
    weights = "model.safetensors"
    assert (out / weights).read_bytes() == (tiny["qwen2.5-vl"] / weights).read_bytes()
    card = json.loads((out / CARD).read_text())
    assert card["training"]["method"] == "full" and "lora" not in card["training"]
    assert (out / MARKER).is_file()


def one_line_error(source: Path, out: Path, base: Path | None = None) -> str:
    from moderator.training.finetune.merge import merge_lora

    with pytest.raises(ConfigError) as caught:
        merge_lora(source, out, base=base)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_input_is_one_line(tiny: dict[str, Path], tmp_path: Path) -> None:
    adapter = make_adapter(tiny["qwen2-vl"], tmp_path / "adapter")
    out = tmp_path / "out"
    assert "no such run or adapter directory" in one_line_error(tmp_path / "nope", out)
    (tmp_path / "empty").mkdir()
    message = one_line_error(tmp_path / "empty", out)
    assert "neither a LoRA adapter" in message and message.endswith(SOURCE_MUST)
    message = one_line_error(adapter, out, base=tiny["llava-onevision"])
    assert "trained on Qwen2VLForConditionalGeneration" in message
    assert "is LlavaOnevisionForConditionalGeneration" in message
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "org/on-the-hub"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert "org/on-the-hub) is not a local directory; give --base PATH" in one_line_error(
        adapter, out
    )
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    message = one_line_error(adapter, tmp_path / "taken", base=tiny["qwen2-vl"])
    assert "not empty and holds no merged checkpoint" in message
    run = make_run(tmp_path, tiny["qwen2-vl"])
    assert "has no final/ yet" in one_line_error(run, out)
    assert not out.exists()
    (tmp_path / "afile").write_text("x")
    message = one_line_error(adapter, tmp_path / "afile", base=tiny["qwen2-vl"])
    assert message.endswith(f"--out: {tmp_path / 'afile'} exists and is not a directory")
    message = one_line_error(adapter, tmp_path / "afile" / "out", base=tiny["qwen2-vl"])
    assert "is not a directory" in message and "cannot create" in message


def test_a_model_outside_any_run_is_not_a_source(tiny: dict[str, Path], tmp_path: Path) -> None:
    """A plain checkpoint (no run around it, no adapter) was never trained here: merging it
    would write a card that claims a full fine-tuning run."""
    message = one_line_error(tiny["qwen2-vl"], tmp_path / "out")
    assert message == (
        f"train merge: {tiny['qwen2-vl']} holds a model that belongs to no run (no config.yaml "
        f"beside it); {SOURCE_MUST}"
    )
    assert not (tmp_path / "out").exists()


def test_a_bad_out_is_refused_before_the_merge_says_anything(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from moderator.cli.main import main

    adapter = make_adapter(tiny["qwen2-vl"], tmp_path / "adapter")
    (tmp_path / "afile").write_text("x")
    args = ["--out", str(tmp_path / "afile"), "--base", str(tiny["qwen2-vl"])]
    capsys.readouterr()  # making the adapter printed its loading
    assert main(["train", "merge", str(adapter), *args]) == 2
    _, stderr = capsys.readouterr()
    assert stderr.strip().splitlines() == [
        f"moderator: train merge: --out: {tmp_path / 'afile'} exists and is not a directory"
    ]
