"""The score for the transformers engine: P("Unsafe") from the model's own logits.

score = P(Unsafe) / (P(Unsafe) + P(Safe)), each rating string's probability being the product of
its tokens' probabilities at the rating position (docs/engines.md). Both ratings are tokenized
the way the tokenizer writes them from the step where the rating starts (including any opening
quote the tokenizer merges into the word), so the two are measured alike even when constrained
decoding took an unusual token path. A word that the generated path spelled in those tokens is
read from the recorded logits; a one-token word from the logits of the step where the rating
starts; anything else gets one extra forward pass over that row, teacher-forcing the word.
Logits are recorded before the grammar mask and before any sampling warpers, so the score is the
model's, not the constrained sampler's. When the rating is not found in the first `RECORD_STEPS`
generated tokens, the score is None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from PIL.Image import Image

from moderator.engine.guard.score import normalised_unsafe, rating_value_span

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
        extend_ids(inputs, [*prefix, *cont[:-1]])
        with torch.inference_mode():
            out = loaded.model(**inputs, logits_to_keep=len(cont))
        logprobs = out.logits[0, -len(cont) :].float().log_softmax(dim=-1)
        return float(sum(logprobs[j, token].item() for j, token in enumerate(cont)))


def extend_ids(inputs: Any, tokens: Sequence[int]) -> None:
    """Append text tokens to a one-row processor output, in place.

    Per-token side inputs (Qwen2-VL's `mm_token_type_ids`) grow with zeros: the new tokens are text.
    """
    import torch

    ids = inputs["input_ids"]
    extra = torch.tensor([list(tokens)], dtype=ids.dtype, device=ids.device)
    for key, value in list(inputs.items()):
        if key in ("input_ids", "attention_mask") or not isinstance(value, torch.Tensor):
            continue
        if value.dim() == 2 and value.shape == ids.shape:
            inputs[key] = torch.cat([value, torch.zeros_like(extra, dtype=value.dtype)], dim=1)
    inputs["input_ids"] = torch.cat([ids, extra], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])


def rating_score(
    tokenizer: Any, ids: Sequence[int], step_logprobs: Sequence[Any], scorer: RowScorer
) -> float | None:
    """P(Unsafe) normalised over the two ratings for one generated row, or None.

    `step_logprobs[i]` is the log-softmax over the vocabulary that produced `ids[i]`.
    """
    located = _locate(tokenizer, ids[: len(step_logprobs)])
    if located is None:
        return None
    ends, text, r, _ = located
    k = next(i for i, end in enumerate(ends) if end > r)
    lead = text[(ends[k - 1] if k > 0 else 0) : r]
    logps = {}
    for rating in RATINGS:
        logp = _word_logprob(tokenizer, lead + rating, ids, k, step_logprobs, scorer)
        if logp is None or not math.isfinite(logp):
            return None
        logps[rating] = logp
    return normalised_unsafe(logps["Unsafe"], logps["Safe"])


def _word_logprob(
    tokenizer: Any,
    word: str,
    ids: Sequence[int],
    k: int,
    step_logprobs: Sequence[Any],
    scorer: RowScorer,
) -> float | None:
    """log P(word's canonical tokens | everything generated before step k)."""
    cand = tokenizer.encode(word, add_special_tokens=False)
    if not cand or tokenizer.decode(cand) != word:
        return None
    if list(ids[k : k + len(cand)]) == cand and k + len(cand) <= len(step_logprobs):
        return sum(float(step_logprobs[k + j][t].item()) for j, t in enumerate(cand))
    if len(cand) == 1:
        return float(step_logprobs[k][cand[0]].item())
    return scorer.continuation_logprob(list(ids[:k]), cand)


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
