"""P("Unsafe") from token log-probabilities (docs/engines.md), exact or null, never a guess.

score = P(Unsafe) / (P(Unsafe) + P(Safe)), where each rating word's probability is that of its
tokens at the position where the rating value starts, whatever the tokenizer merged into them
(a token may carry the opening quote, `"Un`, or the closing one, `safe"`).

From per-token log-probabilities with top alternatives (OpenAI-compatible `logprobs.content`,
LMDeploy, vLLM, SGLang), let k be the step whose token covers the first character of the rating
value, and `lead` the part of that token before it:

- the chosen word's log-probability is the sum over the steps k..m that spell it (m is the first
  step reaching the word's end): the chain rule, every factor observed;
- the other word's log-probability is known only when a top alternative at step k spells
  `lead` + the word in one token (followed by nothing or by the closing quote). It is then
  conditioned on the same context as step k of the chosen path, so the two are comparable. When
  several distinct alternatives do so they are different tokens, so their probabilities add.

The score is null (None) when:

- the generated text has no `"rating": "Safe"` or `"rating": "Unsafe"` (exact case, closing quote
  present), e.g. a lower-case rating the parser accepted, or a model that answered in prose;
- no top alternative at step k spells the other word in one token: the server returned too few
  top log-probabilities, or the tokenizer needs two or more tokens for that word (whose later
  factors were never computed);
- any log-probability needed is NaN or infinite (including -inf for a masked alternative).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

_RATING_KEY = re.compile(r'"rating"\s*:\s*"')
_WORDS = ("Unsafe", "Safe")


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, log-probability, and the top alternatives at its step.

    `top` holds (token text, logprob) pairs as the server listed them; it may include the
    chosen token.
    """

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


def normalised_unsafe(logp_unsafe: float, logp_safe: float) -> float:
    """P(Unsafe) / (P(Unsafe) + P(Safe)) from two log-probabilities, without underflow.

    Equal to exp(logp_unsafe - logsumexp(logp_unsafe, logp_safe)), computed as a logistic of
    the difference so that very negative inputs (long words, unlikely answers) stay exact.
    """
    if not (math.isfinite(logp_unsafe) and math.isfinite(logp_safe)):
        raise ValueError("log-probabilities must be finite")
    diff = logp_unsafe - logp_safe
    if diff >= 0:
        return 1.0 / (1.0 + math.exp(-diff))
    ratio = math.exp(diff)
    return ratio / (1.0 + ratio)


def rating_value_span(text: str) -> tuple[int, str] | None:
    """Offset of the first rating value in generated JSON, and the word there ("Safe"/"Unsafe").

    None when the first `"rating": "` is absent or not followed by exactly one of the two words
    and a closing quote.
    """
    match = _RATING_KEY.search(text)
    if match is None:
        return None
    start = match.end()
    for word in _WORDS:
        if text.startswith(word + '"', start):
            return start, word
    return None


def score_from_token_logprobs(tokens: Sequence[TokenLogprob]) -> float | None:
    """P(Unsafe) normalised over the two ratings, or None where it is not exactly computable."""
    ends: list[int] = []
    offset = 0
    for step in tokens:
        offset += len(step.token)
        ends.append(offset)
    text = "".join(step.token for step in tokens)
    span = rating_value_span(text)
    if span is None:
        return None
    start, word = span
    k = next(i for i, end in enumerate(ends) if end > start)
    m = next(i for i in range(k, len(tokens)) if ends[i] >= start + len(word))
    chosen = [tokens[i].logprob for i in range(k, m + 1)]
    if not all(math.isfinite(lp) for lp in chosen):
        return None
    lead = text[ends[k] - len(tokens[k].token) : start]
    other = "Safe" if word == "Unsafe" else "Unsafe"
    alternative = _one_token_logprob(tokens[k].top, lead + other)
    if alternative is None:
        return None
    logp_word = math.fsum(chosen)
    if word == "Unsafe":
        return normalised_unsafe(logp_word, alternative)
    return normalised_unsafe(alternative, logp_word)


def _one_token_logprob(top: tuple[tuple[str, float], ...], spelling: str) -> float | None:
    """Log-probability that the next token spells `spelling` completely (then nothing or `"`)."""
    found: dict[str, float] = {}
    for text, logprob in top:
        rest = text[len(spelling) :]
        if text.startswith(spelling) and (not rest or rest.startswith('"')):
            if not math.isfinite(logprob):
                return None
            found.setdefault(text, logprob)
    if not found:
        return None
    peak = max(found.values())
    return peak + math.log(math.fsum(math.exp(lp - peak) for lp in found.values()))
