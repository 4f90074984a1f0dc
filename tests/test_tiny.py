"""Tiny random-weight checkpoints: they load with the Auto classes, batch, generate, round-trip."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from moderator.cli.main import main
from moderator.dev.tiny.checkpoint import ARCHES, make_tiny
from moderator.engine.smoke import MARKER, is_smoke_test
from moderator.errors import ConfigError

needs_transformers = pytest.mark.transformers

MESSAGES = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "policy text"}]}
]
RENDERED = {
    "llava-onevision": (
        "<|im_start|>user\n<image>\npolicy text<|im_end|>\n<|im_start|>assistant\n"
    ),
    "qwen2-vl": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>policy text<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
}
RENDERED["qwen2.5-vl"] = RENDERED["qwen2-vl"]
IMAGE_TOKEN = {
    "llava-onevision": "<image>",
    "qwen2-vl": "<|image_pad|>",
    "qwen2.5-vl": "<|image_pad|>",
}
VERDICTS = [
    '{"rating": "Unsafe", "category": "O3: Sexual Content", "rationale": "Explicit content."}',
    '{"rating": "Safe", "category": "NA: None applying", "rationale": "A lake at dawn."}',
    '{"rating": "Safe", "category": "O9: Disasters or Emergencies", '
    '"rationale": "Ünïcode, \\"quotes\\", {braces} and\\nnewlines  twice."}',
]


@pytest.fixture(scope="module")
def hf() -> Any:
    pytest.importorskip("torch", reason="needs the transformers extra (torch)")
    return pytest.importorskip("transformers", reason="needs the transformers extra")


@pytest.fixture(scope="module")
def checkpoints(hf: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny(root / arch, arch) for arch in ARCHES}


def _load(hf: Any, path: Path) -> tuple[Any, Any]:
    from moderator.engine.transformers.processors import load_processor

    processor = load_processor(path)
    model = hf.AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
    return processor, model


@needs_transformers
@pytest.mark.parametrize("arch", ARCHES)
def test_loads_renders_batches_and_generates(
    hf: Any, checkpoints: dict[str, Path], arch: str
) -> None:
    import torch
    from PIL import Image

    processor, model = _load(hf, checkpoints[arch])
    tokenizer = processor.tokenizer
    assert tokenizer.padding_side == "left"

    short = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert short == RENDERED[arch]
    long_messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "a longer policy " * 5}],
        }
    ]
    long = processor.apply_chat_template(long_messages, add_generation_prompt=True, tokenize=False)
    images = [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (64, 48), (0, 90, 160))]

    inputs = processor(text=[short, long], images=images, padding=True, return_tensors="pt")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape[0] == 2 and mask.shape == ids.shape
    assert mask[0, 0] == 0 and mask[1].all() and mask[:, -1].all()  # left padding
    assert (ids[0] == model.config.image_token_id).sum() > 0
    assert (ids[0] == model.config.image_token_id).sum() == (
        ids[1] == model.config.image_token_id
    ).sum()

    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[0] == 2 and ids.shape[1] < out.shape[1] <= ids.shape[1] + 8
    texts = processor.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


@needs_transformers
@pytest.mark.parametrize("arch", ARCHES)
def test_config_matches_tokenizer(hf: Any, checkpoints: dict[str, Path], arch: str) -> None:
    path = checkpoints[arch]
    tokenizer = hf.AutoTokenizer.from_pretrained(path, local_files_only=True)
    config = hf.AutoConfig.from_pretrained(path, local_files_only=True)
    generation = hf.GenerationConfig.from_pretrained(path, local_files_only=True)
    assert config.get_text_config().vocab_size == len(tokenizer)
    assert config.image_token_id == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN[arch])
    assert generation.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert generation.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.pad_token == "<|endoftext|>"
    for verdict in VERDICTS:
        ids = tokenizer.encode(verdict, add_special_tokens=False)
        assert tokenizer.decode(ids) == verdict
        assert len(ids) < len(verdict.encode()) / 2  # merged tokens, not bytes


@needs_transformers
@pytest.mark.parametrize("arch", ARCHES)
def test_same_seed_same_bytes(hf: Any, tmp_path: Path, arch: str) -> None:
    first = make_tiny(tmp_path / "a", arch, seed=7)
    second = make_tiny(tmp_path / "b", arch, seed=7)
    other = make_tiny(tmp_path / "c", arch, seed=8)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    weights = "model.safetensors"
    assert (first / weights).read_bytes() != (other / weights).read_bytes()


@needs_transformers
def test_leaves_the_callers_torch_seed_alone(hf: Any, tmp_path: Path) -> None:
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_tiny(tmp_path / "m", "qwen2-vl")
    assert torch.equal(torch.rand(3), expected)


@needs_transformers
def test_marker_and_smoke_test_flag(hf: Any, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    path = checkpoints["llava-onevision"]
    assert is_smoke_test(path)
    assert not is_smoke_test(tmp_path)
    marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    assert marker == {
        "smoke_test": True,
        "arch": "llava-onevision",
        "seed": 0,
        "note": "random weights: verdicts are meaningless",
    }


def test_refuses_unknown_arch_and_foreign_directories(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown tiny-model arch"):
        make_tiny(tmp_path / "x", "llama-guard")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match="not overwriting"):
        make_tiny(tmp_path / "real", "qwen2-vl")


@needs_transformers
def test_cli_make_tiny(hf: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "cli"
    assert main(["model", "make-tiny", str(target), "--arch", "qwen2-vl"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(target)
    assert err.startswith("moderator: warning: qwen2-vl checkpoint with random weights")
    assert is_smoke_test(target)
    assert json.loads((target / MARKER).read_text(encoding="utf-8"))["arch"] == "qwen2-vl"


def test_cli_without_the_extra_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert main(["model", "make-tiny", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'moderator[transformers]'" in err
    assert len(err.strip().splitlines()) == 1


@needs_transformers
@pytest.mark.parametrize("arch", ARCHES)
def test_names_the_real_processor_class(hf: Any, checkpoints: dict[str, Path], arch: str) -> None:
    from moderator.engine.transformers.processors import IMAGE_ONLY, load_processor, processor_class

    name = processor_class(checkpoints[arch])
    assert name in IMAGE_ONLY
    processor = load_processor(checkpoints[arch])
    assert isinstance(processor, getattr(hf, name))


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("afile", "make-tiny: DIRECTORY: {root}/afile exists and is not a directory"),
        (
            "afile/x/y",
            "make-tiny: DIRECTORY: cannot create {root}/afile/x/y: {root}/afile is not a directory",
        ),
    ],
)
def test_cli_a_file_in_the_way_is_one_usage_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, says: str
) -> None:
    (tmp_path / "afile").write_text("not a checkpoint\n", encoding="utf-8")
    assert main(["model", "make-tiny", str(tmp_path / where)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"moderator: {says.format(root=tmp_path)}\n"
    assert (tmp_path / "afile").read_text(encoding="utf-8") == "not a checkpoint\n"


def test_cli_usage_names_the_directory_in_capitals(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["model", "make-tiny", "--help"])
    assert exited.value.code == 0
    usage = " ".join(capsys.readouterr().out.split("\n\n", 1)[0].split())
    assert usage.endswith("[--seed N] DIRECTORY"), usage


@needs_transformers
def test_cli_names_a_directory_it_may_not_create(
    hf: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(self: Path, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(1, "Operation not permitted", str(self))

    monkeypatch.setattr(Path, "mkdir", refused)
    assert main(["model", "make-tiny", str(tmp_path / "sys" / "foo")]) == 2
    assert capsys.readouterr().err == (
        f"moderator: make-tiny: DIRECTORY: cannot create {tmp_path / 'sys' / 'foo'}: "
        "Operation not permitted\n"
    )
