"""The `lmdeploy` engine's score: P("Unsafe") from the model's own distribution (docs/engines.md).

TurboMind reports log-probabilities from the distribution it samples from, after temperature,
the schema's grammar mask and the top-k/top-p cut. With the default greedy, schema-constrained
decoding each step reports only the chosen token at log 1 = 0, so the generation itself says
nothing about the other rating. Each judged item therefore gets one more request, a *scoring
request*: the same user turn plus the start of the answer the model gave, up to where the rating
value begins (`{"rating": "`), as a partial assistant turn the model continues for one token,
reporting the top N log-probabilities of its own distribution (no temperature, no grammar mask;
renormalised over those N only, which leaves the difference of two of them exact:
`lmdeploy_config.scoring_config_kwargs`).

The parts that need no lmdeploy live here:

- `answer_prefix`: the generated text up to the rating value;
- `rating_cut`: where to end the partial answer and which tokens spell each rating after it,
  with the engine's tokenizer (a rating word may merge with the opening quote);
- `scoring_messages`: the scoring request's messages;
- `score_from_top`: the score from the returned `{token id: logprob}`;
- `collect_output` and `request_score`: the scoring request itself, on lmdeploy's AsyncEngine
  (duck-typed, so this module imports no lmdeploy);
- `token_logprobs` and `generation_score`: the score from the generation's own
  log-probabilities where those are already raw (temperature 1, top-p 1, no schema).

The score is null, with a reason, whenever it is not exact: no rating in the output
(`RATING_NOT_FOUND`), a rating that needs more than one token after the cut
(`SEVERAL_TOKENS`), a rating token missing from the returned log-probabilities (`NOT_IN_TOP`),
a rendered prompt that does not end with the partial answer's tokens (`NOT_CONTINUED`), a
failed scoring request (`REQUEST_FAILED`), scoring switched off (`DISABLED`), or generation
log-probabilities that do not cover both ratings (`GENERATION_INEXACT`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from moderator.engine.guard.score import (
    TokenLogprob,
    normalised_unsafe,
    rating_value_span,
    score_from_token_logprobs,
)

log = structlog.get_logger("moderator.engine.lmdeploy")

RATINGS = ("Safe", "Unsafe")

SCORING_REQUEST = "scoring_request"
GENERATION_LOGPROBS = "generation_logprobs"
NO_SCORE = "none"

RATING_NOT_FOUND = "rating not found"
SEVERAL_TOKENS = "word needs several tokens"
NOT_IN_TOP = "not in top-N"
NOT_CONTINUED = "prompt does not end with the partial answer"
REQUEST_FAILED = "scoring request failed"
DISABLED = "disabled"
GENERATION_INEXACT = "generation logprobs do not cover both ratings"


@dataclass(frozen=True)
class ScoreOutcome:
    """A score, how it was obtained (`SCORING_REQUEST`, `GENERATION_LOGPROBS`, or `NO_SCORE`),
    and why it is None."""

    value: float | None
    method: str
    reason: str | None = None

    @classmethod
    def none(cls, reason: str) -> ScoreOutcome:
        return cls(None, NO_SCORE, reason)

    def record(self) -> dict[str, Any]:
        """The audit record's `score_method` and `score_reason` (None when there is a score)."""
        return {"score_method": self.method, "score_reason": self.reason}


@dataclass(frozen=True)
class RatingCut:
    """Where the scoring request's partial answer ends, and each rating's tokens after it.

    `prefix` is the partial answer (a prefix of the generated text), `prefix_tokens` its
    tokens, and `words[rating]` the tokens that follow `prefix_tokens` when the tokenizer
    encodes the text up to the rating value followed by that rating.
    """

    prefix: str
    prefix_tokens: tuple[int, ...]
    words: Mapping[str, tuple[int, ...]]

    def single_tokens(self) -> dict[str, int] | None:
        """Each rating's one token, or None when a rating needs more than one."""
        if any(len(tokens) != 1 for tokens in self.words.values()):
            return None
        return {word: tokens[0] for word, tokens in self.words.items()}


def answer_prefix(text: str) -> str | None:
    """The generated text up to the start of the rating value, or None without a rating."""
    span = rating_value_span(text)
    return None if span is None else text[: span[0]]


def rating_cut(encode: Callable[[str], Sequence[int]], prefix: str) -> RatingCut:
    """The longest start of `prefix` whose tokens begin the tokens of `prefix + rating` for both
    ratings, and what follows them.

    `encode` is the engine's tokenizer without BOS (as LMDeploy encodes the text after an
    image). Usually the cut is `prefix` itself and each rating is one token of its own. Where
    the tokenizer merges the end of `prefix` into the word (`"Unsafe` as one token), the cut
    moves back before the merged part (the *lead*), and each rating's tokens spell lead + word:
    both ratings are then measured from the same context, so their ratio is the ratio of the
    two words given the whole prefix. Cutting at the start always qualifies.
    """
    fulls = {word: list(encode(prefix + word)) for word in RATINGS}
    for end in range(len(prefix), 0, -1):
        head = list(encode(prefix[:end]))
        if all(full[: len(head)] == head for full in fulls.values()):
            return RatingCut(
                prefix[:end],
                tuple(head),
                {word: tuple(full[len(head) :]) for word, full in fulls.items()},
            )
    return RatingCut("", (), {word: tuple(full) for word, full in fulls.items()})


def scoring_messages(messages: Sequence[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """The item's messages plus the partial answer as a last assistant message.

    lmdeploy 0.18 continues a final assistant message instead of starting a new turn: the
    Qwen2-VL vision model passes a non-user message through unchanged
    (`Qwen2VLModel.proc_messages`, lmdeploy/vl/model/qwen2.py), and the chat template renders a
    conversation ending with an assistant message as "a prefix of response":
    `HFChatTemplate.messages2prompt` (lmdeploy/model.py) calls `apply_chat_template` with
    `add_generation_prompt=False` and cuts the assistant end marker (`<|im_end|>\\n`) off the
    end, as `BaseChatTemplate.messages2prompt` cuts `eoa + separator`.
    """
    return [*messages, {"role": "assistant", "content": prefix}]


def continuation_problem(inputs: Mapping[str, Any], cut: RatingCut) -> str | None:
    """`NOT_CONTINUED` unless the preprocessed prompt ends with the partial answer and its
    tokens (the rating tokens were counted from there), else None."""
    prompt = inputs.get("prompt")
    ids = list(inputs.get("input_ids") or ())
    tail = list(cut.prefix_tokens)
    if not isinstance(prompt, str) or not prompt.endswith(cut.prefix):
        return NOT_CONTINUED
    if tail and ids[-len(tail) :] != tail:
        return NOT_CONTINUED
    return None


def score_from_top(top: Mapping[int, float], tokens: Mapping[str, int]) -> ScoreOutcome:
    """The score from one step's `{token id: logprob}` and each rating's token.

    Every entry TurboMind returns for the scoring request is the raw log-probability minus the
    same constant (see `scoring_config_kwargs`), so the difference of the two ratings' entries
    is exact. A rating missing from `top`, or not finite there, gives `NOT_IN_TOP`.
    """
    logps = {}
    for word, token in tokens.items():
        logp = top.get(token)
        if logp is None or not math.isfinite(logp):
            return ScoreOutcome.none(NOT_IN_TOP)
        logps[word] = float(logp)
    return ScoreOutcome(normalised_unsafe(logps["Unsafe"], logps["Safe"]), SCORING_REQUEST)


def generation_score(text: str, tokens: Sequence[TokenLogprob] | None) -> ScoreOutcome:
    """The score from the generation's own log-probabilities, when those are raw (temperature
    1, top-p 1, no schema: `logprobs_are_exact`), so that no scoring request is needed."""
    value = score_from_token_logprobs(tokens) if tokens else None
    if value is not None:
        return ScoreOutcome(value, GENERATION_LOGPROBS)
    found = answer_prefix(text) is not None
    return ScoreOutcome.none(GENERATION_INEXACT if found else RATING_NOT_FOUND)


async def collect_output(
    engine: Any, request: Any
) -> tuple[str, list[int], list[dict[int, float]], str | None]:
    """Run a preprocessed request on lmdeploy's AsyncEngine: text, token ids, per-step
    `{token id: logprob}` and finish reason, accumulated as lmdeploy's `Response.extend` does
    (text, ids and logprobs concatenate)."""
    parts: list[str] = []
    ids: list[int] = []
    steps: list[dict[int, float]] = []
    finish = None
    async for out in engine.generate(request, stream_response=False):
        parts.append(out.response)
        ids.extend(out.token_ids or ())
        steps.extend(out.logprobs or ())
        finish = out.finish_reason
    return "".join(parts), ids, steps, finish


async def request_score(
    engine: Any, messages: Sequence[dict[str, Any]], text: str, config: Any
) -> ScoreOutcome:
    """The score of a generated `text` from a scoring request on lmdeploy's AsyncEngine.

    No rating in `text`: no request. Any failure of the request (preprocessing, an engine
    error, an aborted request, no log-probabilities) gives `REQUEST_FAILED`, never an error
    for the item. `config` is the GenerationConfig of `scoring_config_kwargs`.
    """
    prefix = answer_prefix(text)
    if prefix is None:
        return ScoreOutcome.none(RATING_NOT_FOUND)
    try:
        return await _scoring_request(engine, messages, prefix, config)
    except Exception as exc:  # the extra request may only cost the score
        lines = str(exc).strip().splitlines()
        log.warning(
            "lmdeploy_scoring_request_failed",
            error=f"{type(exc).__name__}: {lines[0] if lines else ''}",
        )
        return ScoreOutcome.none(REQUEST_FAILED)


async def _scoring_request(
    engine: Any, messages: Sequence[dict[str, Any]], prefix: str, config: Any
) -> ScoreOutcome:
    tokenizer = engine.tokenizer
    cut = rating_cut(lambda part: tokenizer.encode(part, add_bos=False), prefix)
    tokens = cut.single_tokens()
    if tokens is None:
        return ScoreOutcome.none(SEVERAL_TOKENS)
    request = await engine.preprocess(
        messages=scoring_messages(messages, cut.prefix),
        session_id=engine.session_mgr.get(),
        gen_config=config,
    )
    problem = continuation_problem(request.inputs, cut)
    if problem is not None:
        engine.session_mgr.remove(request.session)  # generate would have removed it
        return ScoreOutcome.none(problem)
    _, _, steps, finish = await collect_output(engine, request)
    if finish in ("error", "abort") or not steps:
        return ScoreOutcome.none(REQUEST_FAILED)
    return score_from_top(steps[0], tokens)


def token_logprobs(
    token_ids: Sequence[int],
    steps: Sequence[Mapping[int, float]] | None,
    decode: Callable[[int], str],
) -> list[TokenLogprob] | None:
    """LMDeploy's per-step `{token id: logprob}` dicts as TokenLogprob, or None if unaligned.

    TurboMind adds the chosen token to each step's dict; a step without it gets NaN, which
    makes the score None rather than a guess.
    """
    if not steps or len(steps) != len(token_ids):
        return None
    texts: dict[int, str] = {}

    def text(token: int) -> str:
        if token not in texts:
            texts[token] = decode(token)
        return texts[token]

    tokens = []
    for token, step in zip(token_ids, steps, strict=True):
        ranked = sorted(step.items(), key=lambda pair: -pair[1])
        tokens.append(
            TokenLogprob(
                token=text(token),
                logprob=float(step.get(token, math.nan)),
                top=tuple((text(t), float(lp)) for t, lp in ranked),
            )
        )
    return tokens
