"""The score for the transformers engine: P("Unsafe") from the model's own logits.

score = P(Unsafe) / (P(Unsafe) + P(Safe)), each rating string's probability being the product
of its tokens' probabilities at the rating position (DESIGN.md §2). The generated path gives the
chosen rating's tokens directly. The other rating is tokenized the way the tokenizer would write
it from the same point (including any opening quote the tokenizer merges into the word); its
first token's probability comes from the same step's logits, and when it needs more than one
token, one extra forward pass over that row teacher-forces the rest. Logits are recorded before
the grammar mask and before any sampling warpers, so the score is the model's, not the
constrained sampler's. When the rating is not found in the first `RECORD_STEPS` generated
tokens, the score is None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from PIL.Image import Image

from moderator.engine.score import normalised_unsafe, rating_value_span

RECORD_STEPS = 24  # the rating comes within the first few tokens of `{"rating": "...`
RATINGS = ("Safe", "Unsafe")


class LogprobRecorder:
    """A logits processor that keeps log-softmax of the raw logits for the first steps.

    It must come first in the processor list so it sees the logits before any mask or warper.
    """

    def __init__(self, steps: int = RECORD_STEPS) -> None:
        self.steps = steps
        self.logprobs: list[Any] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if len(self.logprobs) < self.steps:
            self.logprobs.append(scores.float().log_softmax(dim=-1))
        return scores


class RowScorer:
    """Teacher-forces a continuation after one row's prompt: log P(cont | prompt + prefix)."""

    def __init__(self, loaded: Any, text: str, image: Image) -> None:
        self._loaded = loaded
        self._text = text
        self._image = image

    def continuation_logprob(self, prefix: Sequence[int], cont: Sequence[int]) -> float:
        import torch

        loaded = self._loaded
        inputs = loaded.processor(text=[self._text], images=[self._image], return_tensors="pt")
        inputs = inputs.to(loaded.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
        extra = torch.tensor([[*prefix, *cont[:-1]]], dtype=inputs["input_ids"].dtype)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], extra.to(loaded.device)], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        with torch.inference_mode():
            out = loaded.model(**inputs, logits_to_keep=len(cont))
        logprobs = out.logits[0, -len(cont) :].float().log_softmax(dim=-1)
        return float(sum(logprobs[j, token].item() for j, token in enumerate(cont)))


def rating_score(
    tokenizer: Any, ids: Sequence[int], step_logprobs: Sequence[Any], scorer: RowScorer
) -> float | None:
    """P(Unsafe) normalised over the two ratings for one generated row, or None.

    `step_logprobs[i]` is the log-softmax over the vocabulary that produced `ids[i]`.
    """
    located = _locate(tokenizer, ids[: len(step_logprobs)])
    if located is None:
        return None
    ends, text, r, word = located
    k = next(i for i, end in enumerate(ends) if end > r)
    m = next(i for i, end in enumerate(ends) if end >= r + len(word))
    chosen = sum(float(step_logprobs[i][ids[i]].item()) for i in range(k, m + 1))
    lead = text[(ends[k - 1] if k > 0 else 0) : r]
    other = RATINGS[1] if word == RATINGS[0] else RATINGS[0]
    other_ids = tokenizer.encode(lead + other, add_special_tokens=False)
    if not other_ids or tokenizer.decode(other_ids) != lead + other:
        return None
    if len(other_ids) == 1:
        alternative = float(step_logprobs[k][other_ids[0]].item())
    else:
        alternative = scorer.continuation_logprob(list(ids[:k]), other_ids)
    if not (math.isfinite(chosen) and math.isfinite(alternative)):
        return None
    if word == "Unsafe":
        return normalised_unsafe(chosen, alternative)
    return normalised_unsafe(alternative, chosen)


def _locate(tokenizer: Any, ids: Sequence[int]) -> tuple[list[int], str, int, str] | None:
    """Character end of each token, the text, and the rating value's offset and word.

    Stops decoding once the rating word is complete (followed by its closing quote).
    """
    ends: list[int] = []
    text = ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        ends.append(len(text))
        span = rating_value_span(text)
        if span is not None and text[span[0] + len(span[1]) : span[0] + len(span[1]) + 1] == '"':
            r, word = span
            if word in RATINGS and ends[-1] >= r + len(word):
                return ends, text, r, word
    return None
