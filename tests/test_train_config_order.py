"""A run configuration with several problems names an unknown key (and the key it probably
meant) first: a range error elsewhere never hides a typo."""

from __future__ import annotations

import pytest

from moderator.errors import ConfigError
from moderator.training.finetune.config import parse_config

REQUIRED = {"base_model": "b", "dataset": "d", "output_dir": "o"}


def test_an_unknown_key_comes_before_a_range_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({**REQUIRED, "batch_size": 0, "epoch": 3, "warmup_ratio": 2}, "bad.yaml")
    assert str(caught.value) == (
        "train config bad.yaml: epoch: unknown key; did you mean 'epochs'? (and 2 more problems)"
    )


def test_an_unknown_key_in_a_section_comes_first_too() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({**REQUIRED, "batch_size": 0, "lora": {"rank": 8}}, "bad.yaml")
    assert str(caught.value).startswith("train config bad.yaml: lora.rank: unknown key;")
    assert str(caught.value).endswith("(and 1 more problem)")
