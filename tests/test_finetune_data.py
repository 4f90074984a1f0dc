"""Training examples on tiny checkpoints of the three architectures: the loss mask covers
exactly the answer and its end token, the prompt is the engine's, and a padded batch gives
every example the logits it has alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from moderator.errors import ModeratorError
from moderator.fetch.decode import DecodeLimits
from moderator.settings import EngineSettings, Settings
from moderator.training.evaluate import ImageSource
from tests.finetune_fixtures import ARCHES, make_samples
from tests.policy_fixtures import clear_moderator_env

pytestmark = pytest.mark.transformers

torch = pytest.importorskip("torch", reason="needs the transformers extra (torch)")
pytest.importorskip("transformers", reason="needs the transformers extra")
pytest.importorskip("peft", reason="needs the train extra (peft)")

from moderator.dev.tiny.checkpoint import make_tiny  # noqa: E402  # torch checked first
from moderator.engine.transformers import load as hf_load  # noqa: E402
from moderator.training.finetune.collate import Collator  # noqa: E402
from moderator.training.finetune.data import (  # noqa: E402
    IGNORE,
    ChatEncoder,
    TrainingSet,
    answer_text,
)

END = "<|im_end|>"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_moderator_env(monkeypatch)  # Settings() below: the defaults


def engine_settings(checkpoint: Path) -> EngineSettings:
    return EngineSettings.model_validate(
        {
            "kind": "transformers",
            "model": str(checkpoint),
            "transformers": {"device": "cpu", "threads": 1, "warmup": False},
        }
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-data")
    return {arch: make_tiny(root / arch, arch) for arch in ARCHES}


@pytest.fixture(scope="module")
def loaded(tiny: dict[str, Path]) -> dict[str, hf_load.Loaded]:
    """Each checkpoint as the engine's loader loads it (as training does)."""
    return {arch: hf_load.load(engine_settings(path)) for arch, path in tiny.items()}


def training_set(tmp_path: Path, loaded: hf_load.Loaded, n: int = 2) -> TrainingSet:
    samples = make_samples(tmp_path, n)
    samples[-1] = dataclasses.replace(samples[-1], prompt=None)  # the default prompt
    (tmp_path / "train.json").touch()
    return TrainingSet(
        samples,
        ChatEncoder(loaded.processor, loaded.eos_token_ids),
        ImageSource(tmp_path / "train.json", Settings()),
        default_prompt="The default policy's prompt.",
        limits=DecodeLimits.from_settings(Settings().fetch),
        input_size=hf_load.input_size(loaded),
    )


@pytest.mark.parametrize("arch", ARCHES)
def test_only_the_answer_and_its_end_token_are_trained(
    arch: str, loaded: dict[str, hf_load.Loaded], tmp_path: Path
) -> None:
    model = loaded[arch]
    dataset = training_set(tmp_path, model)
    sample = make_samples(tmp_path, 1)[0]
    example = dataset[0]
    labels, ids = example["labels"], example["input_ids"]
    trained = labels != IGNORE
    tokenizer = model.processor.tokenizer
    assert tokenizer.decode(labels[trained]) == answer_text(sample) + END
    assert torch.equal(labels[trained], ids[trained])
    # The trained tokens are one run at the very end; the prompt before it is untouched.
    first = int(trained.nonzero()[0])
    assert bool(trained[first:].all())
    prompt = tokenizer.decode(ids[:first])
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "Assess the picture against the policy." in prompt
    assert answer_text(sample).startswith('{"rating": "Unsafe", "category": "O2: ')
    assert example["attention_mask"].tolist() == [1] * len(ids)


@pytest.mark.parametrize("arch", ["llava-onevision", "qwen2.5-vl"])
def test_the_prompt_is_rendered_as_the_engine_renders_it(
    arch: str, tiny: dict[str, Path], loaded: dict[str, hf_load.Loaded]
) -> None:
    from moderator.engine.transformers.engine import TransformersEngine

    model = loaded[arch]
    encoder = ChatEncoder(model.processor, model.eos_token_ids)
    prompt = "Judge this picture."
    engine = TransformersEngine(engine_settings(tiny[arch]))
    try:
        rendered = engine.render(prompt)
    finally:
        engine.close()
    assert encoder.render_prompt(prompt) == rendered
    image = make_image()
    served = model.processor(text=[rendered], images=[image], return_tensors="pt")
    example = encoder.encode(prompt, '{"rating": "Safe"}', image)
    n = int(served["input_ids"].shape[1])
    assert torch.equal(example["input_ids"][:n], served["input_ids"][0])
    assert torch.equal(example["pixel_values"], served["pixel_values"])


def make_image() -> Any:
    from PIL import Image

    return Image.new("RGB", (64, 40), (90, 20, 200))


def test_a_sample_without_a_prompt_gets_the_default(
    loaded: dict[str, hf_load.Loaded], tmp_path: Path
) -> None:
    model = loaded["qwen2-vl"]
    dataset = training_set(tmp_path, model)
    ids = dataset[1]["input_ids"]
    assert "The default policy's prompt." in model.processor.tokenizer.decode(ids)
    assert "The default policy's prompt." not in model.processor.tokenizer.decode(
        dataset[0]["input_ids"]
    )


@pytest.mark.parametrize("arch", ARCHES)
def test_a_padded_batch_gives_each_example_its_own_logits(
    arch: str, loaded: dict[str, hf_load.Loaded], tmp_path: Path
) -> None:
    model = loaded[arch]
    dataset = training_set(tmp_path, model)  # two images of different sizes and prompts
    examples = [dataset[0], dataset[1]]
    lengths = [int(e["input_ids"].shape[0]) for e in examples]
    assert lengths[0] != lengths[1]
    batch = Collator(model.pad_token_id)(examples)
    longest = max(lengths)
    assert batch["input_ids"].shape == (2, longest)
    for row, n in enumerate(lengths):
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (longest - n)
        assert batch["labels"][row, n:].eq(IGNORE).all()
    if arch == "llava-onevision":
        tiles = [int(e["pixel_values"].shape[1]) for e in examples]
        assert tiles[0] != tiles[1]  # the shorter one is padded with zero tiles
        assert batch["pixel_values"].shape[:2] == (2, max(tiles))
    else:
        assert batch["image_grid_thw"].shape == (2, 3)
    with torch.no_grad():
        together = model.model(**batch).logits
        for row, (example, n) in enumerate(zip(examples, lengths, strict=True)):
            alone = model.model(**Collator(model.pad_token_id)([example])).logits[0]
            torch.testing.assert_close(together[row, :n], alone, rtol=1e-4, atol=1e-4)


def test_an_unreadable_image_names_the_sample(
    loaded: dict[str, hf_load.Loaded], tmp_path: Path
) -> None:
    dataset = training_set(tmp_path, loaded["qwen2-vl"])
    (tmp_path / "images" / "s0.png").write_bytes(b"not a picture")
    with pytest.raises(ModeratorError, match=r"^sample s0: image images/s0\.png: "):
        dataset[0]
