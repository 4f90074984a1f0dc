"""Batching encoded examples (data.py) the way each architecture's forward pass takes them.

Token-level tensors (input ids, attention mask, labels, Qwen2-VL's `mm_token_type_ids`) are
padded on the right to the longest example: input ids with the pad token, labels with -100, the
rest with 0. Image tensors are joined along their first dimension:

- Qwen2-VL / Qwen2.5-VL: `pixel_values` are the patches of all images one after another and
  `image_grid_thw` says how many belong to each image, so both are concatenated.
- LLaVA-OneVision: `pixel_values` are (images, tiles, 3, H, W) and images differ in their
  number of tiles; the shorter ones are padded with zero tiles, as the processor itself does
  for a batch, and `image_sizes` tells the model which tiles are real.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # the usual name

from moderator.training.finetune.data import IGNORE, TOKEN_KEYS

SEQUENCE_KEYS = (*TOKEN_KEYS, "labels")


class Collator:
    """`collate(examples) -> batch` for transformers' Trainer (its `data_collator`)."""

    def __init__(self, pad_token_id: int) -> None:
        self._pad = {"input_ids": pad_token_id, "labels": IGNORE}

    def __call__(self, examples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("an empty batch")
        keys = examples[0].keys()
        batch: dict[str, torch.Tensor] = {}
        for key in keys:
            values = [example[key] for example in examples]
            if key in SEQUENCE_KEYS:
                batch[key] = pad_right(values, self._pad.get(key, 0))
            else:
                batch[key] = join_images(values)
        return batch


def pad_right(values: Sequence[torch.Tensor], fill: int) -> torch.Tensor:
    """1-D tensors stacked into (batch, longest), padded on the right with `fill`."""
    longest = max(int(v.shape[0]) for v in values)
    return torch.stack([F.pad(v, (0, longest - int(v.shape[0])), value=fill) for v in values])


def join_images(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-example image tensors concatenated along dimension 0; every other dimension is
    padded with zeros (at its end) to the largest size in the batch."""
    dims = values[0].dim()
    if any(v.dim() != dims for v in values):
        raise ValueError("image tensors of different ranks in one batch")
    if dims == 0:
        return torch.stack(list(values))
    largest = [max(int(v.shape[d]) for v in values) for d in range(1, dims)]
    padded = []
    for value in values:
        pad: list[int] = []
        for d in reversed(range(1, dims)):  # F.pad lists the last dimension first
            pad.extend((0, largest[d - 1] - int(value.shape[d])))
        padded.append(F.pad(value, pad) if any(pad) else value)
    return torch.cat(padded)
