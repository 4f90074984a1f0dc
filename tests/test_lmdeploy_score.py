"""The `lmdeploy` engine's score helpers, without lmdeploy: where the partial answer is cut, which
tokens spell each rating after it, the score from one step's log-probabilities, the scoring
request's messages and config, and the request's control flow against a plain-Python engine
double. tests/test_lmdeploy_engine.py runs the scoring request through lmdeploy's own
preprocessing."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace
from typing import Any

import pydantic
import pytest
from PIL import Image

from moderator.engine.guard.score import TokenLogprob, normalised_unsafe
from moderator.engine.lmdeploy.config import scoring_config_kwargs
from moderator.engine.lmdeploy.score import (
    DISABLED,
    GENERATION_INEXACT,
    NOT_CONTINUED,
    NOT_IN_TOP,
    RATING_NOT_FOUND,
    REQUEST_FAILED,
    SEVERAL_TOKENS,
    RatingCut,
    ScoreOutcome,
    answer_prefix,
    continuation_problem,
    generation_score,
    rating_cut,
    request_score,
    score_from_top,
    scoring_messages,
)
from moderator.settings import LmdeploySettings

PREFIX = '{"rating": "'


class GreedyTokenizer:
    """Longest-match tokenizer over a fixed vocabulary; any other character is its own token.

    Enough to model the cases that matter: a quote the tokenizer keeps apart from the word, a
    quote it merges into the word, and a word it splits.
    """

    def __init__(self, vocab: Sequence[str]) -> None:
        self.ids = {piece: i for i, piece in enumerate(vocab)}
        self.longest = max(len(piece) for piece in vocab)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        assert add_bos is False
        out: list[int] = []
        i = 0
        while i < len(text):
            for size in range(min(self.longest, len(text) - i), 0, -1):
                piece = text[i : i + size]
                if piece in self.ids:
                    out.append(self.ids[piece])
                    i += size
                    break
            else:
                out.append(10_000 + ord(text[i]))
                i += 1
        return out


SEPARATE = GreedyTokenizer(['{"', "rating", '":', ' "', "Unsafe", "Safe"])
MERGED = GreedyTokenizer(['{"', "rating", '":', " ", '"Unsafe', '"Safe', '"'])
SPLIT = GreedyTokenizer(['{"', "rating", '":', ' "', "Un", "safe", "Safe"])
HALF_MERGED = GreedyTokenizer(['{"', "rating", '":', " ", '"Unsafe', '"', "Safe"])


# --- the partial answer and the rating tokens ----------------------------------------------------


def test_answer_prefix_ends_where_the_rating_value_starts() -> None:
    assert answer_prefix('{"rating": "Unsafe", "category": "O1"}') == PREFIX
    assert answer_prefix(' {"rating":"Safe"}') == ' {"rating":"'
    assert answer_prefix('{"rating": "unsafe"}') is None
    assert answer_prefix("I cannot judge this image.") is None


def test_cut_is_the_whole_prefix_when_the_word_stands_alone() -> None:
    cut = rating_cut(SEPARATE.encode, PREFIX)
    assert cut.prefix == PREFIX
    assert cut.prefix_tokens == tuple(SEPARATE.encode(PREFIX))
    assert cut.single_tokens() == {"Safe": SEPARATE.ids["Safe"], "Unsafe": SEPARATE.ids["Unsafe"]}


def test_cut_moves_before_a_quote_the_tokenizer_merges_into_the_word() -> None:
    cut = rating_cut(MERGED.encode, PREFIX)
    assert cut.prefix == '{"rating": '  # the lead `"` belongs to the rating tokens
    assert cut.single_tokens() == {"Safe": MERGED.ids['"Safe'], "Unsafe": MERGED.ids['"Unsafe']}
    assert MERGED.encode(cut.prefix) == list(cut.prefix_tokens)


def test_a_word_of_several_tokens_is_reported() -> None:
    cut = rating_cut(SPLIT.encode, PREFIX)
    assert cut.prefix == PREFIX
    assert cut.words["Unsafe"] == (SPLIT.ids["Un"], SPLIT.ids["safe"])
    assert cut.single_tokens() is None


def test_when_only_one_word_merges_the_other_needs_two_tokens() -> None:
    cut = rating_cut(HALF_MERGED.encode, PREFIX)
    assert cut.prefix == '{"rating": '
    assert cut.words["Unsafe"] == (HALF_MERGED.ids['"Unsafe'],)
    assert cut.words["Safe"] == (HALF_MERGED.ids['"'], HALF_MERGED.ids["Safe"])
    assert cut.single_tokens() is None


def test_cut_may_fall_back_to_the_start() -> None:
    seen: dict[str, int] = {}

    def glue(text: str) -> list[int]:  # one token per distinct text: no shared start
        return [seen.setdefault(text, len(seen))]

    cut = rating_cut(glue, PREFIX)
    assert (cut.prefix, cut.prefix_tokens) == ("", ())
    expected = {"Safe": glue(PREFIX + "Safe")[0], "Unsafe": glue(PREFIX + "Unsafe")[0]}
    assert cut.single_tokens() == expected


# --- the score from one step ---------------------------------------------------------------------


TOKENS = {"Unsafe": 7, "Safe": 9}


def test_score_from_top_normalises_the_two_ratings() -> None:
    outcome = score_from_top({7: -0.4, 9: -1.2, 3: -2.0}, TOKENS)
    assert outcome.value == pytest.approx(normalised_unsafe(-0.4, -1.2))
    assert outcome.record() == {"score_method": "scoring_request", "score_reason": None}
    # A constant shift (TurboMind's renormalisation over the kept top-k) changes nothing.
    shifted = score_from_top({7: -0.4 - 5.0, 9: -1.2 - 5.0}, TOKENS)
    assert shifted.value == pytest.approx(outcome.value)


def test_confident_models_keep_an_exact_tiny_score() -> None:
    outcome = score_from_top({9: -1e-12, 7: -40.0}, TOKENS)
    assert outcome.value is not None and 0 < outcome.value < 1e-17


@pytest.mark.parametrize(
    "top", [{7: -0.1}, {9: -0.1}, {}, {7: -0.1, 9: -math.inf}, {7: math.nan, 9: -0.1}]
)
def test_a_missing_or_unusable_rating_gives_no_score(top: dict[int, float]) -> None:
    outcome = score_from_top(top, TOKENS)
    assert outcome == ScoreOutcome(None, "none", NOT_IN_TOP)
    assert outcome.record() == {"score_method": "none", "score_reason": "not in top-N"}


def test_generation_score_from_raw_generation_logprobs() -> None:
    tokens = [
        TokenLogprob(PREFIX, -0.01, ((PREFIX, -0.01),)),
        TokenLogprob("Unsafe", -0.3, (("Unsafe", -0.3), ("Safe", -1.5))),
        TokenLogprob('"}', 0.0, (('"}', 0.0),)),
    ]
    outcome = generation_score(PREFIX + 'Unsafe"}', tokens)
    assert outcome.value == pytest.approx(normalised_unsafe(-0.3, -1.5))
    assert outcome.method == "generation_logprobs"
    narrow = [tokens[0], TokenLogprob("Unsafe", 0.0, (("Unsafe", 0.0),)), tokens[2]]
    assert generation_score(PREFIX + 'Unsafe"}', narrow).reason == GENERATION_INEXACT
    assert generation_score("no rating", None).reason == RATING_NOT_FOUND
    assert ScoreOutcome.none(DISABLED).record() == {
        "score_method": "none",
        "score_reason": DISABLED,
    }


# --- the scoring request's messages, config and rendered prompt ----------------------------------


def test_scoring_messages_add_the_partial_answer_as_the_last_assistant_turn() -> None:
    user = [{"role": "user", "content": [{"type": "text", "text": "policy"}]}]
    messages = scoring_messages(user, PREFIX)
    assert messages == [*user, {"role": "assistant", "content": PREFIX}]
    assert messages[0] is user[0] and len(user) == 1


def test_scoring_config_is_one_sampled_token_with_top_k_logprobs() -> None:
    assert scoring_config_kwargs(20) == {
        "max_new_tokens": 1,
        "do_sample": True,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 20,
        "logprobs": 20,
        "ignore_eos": True,
    }


def test_score_settings_defaults_and_bounds() -> None:
    settings = LmdeploySettings()
    assert (settings.score_request, settings.score_top_logprobs) == (True, 20)
    assert settings.enable_prefix_caching is True
    assert LmdeploySettings(score_top_logprobs=1024).score_top_logprobs == 1024
    for bad in (1, 1025):
        with pytest.raises(pydantic.ValidationError):
            LmdeploySettings(score_top_logprobs=bad)


def test_continuation_problem_checks_the_prompt_text_and_tokens() -> None:
    cut = RatingCut(PREFIX, (5, 6), {"Safe": (1,), "Unsafe": (2,)})
    assert continuation_problem({"prompt": "x" + PREFIX, "input_ids": [1, 5, 6]}, cut) is None
    assert continuation_problem({"prompt": "x" + PREFIX + "<|im_end|>\n"}, cut) == NOT_CONTINUED
    assert continuation_problem({"prompt": PREFIX, "input_ids": [5, 6, 7]}, cut) == NOT_CONTINUED
    assert continuation_problem({"input_ids": [5, 6]}, cut) == NOT_CONTINUED
    empty = RatingCut("", (), {"Safe": (1,), "Unsafe": (2,)})
    assert continuation_problem({"prompt": "anything", "input_ids": [1]}, empty) is None


# --- the request's control flow on a plain-Python engine double ----------------------------------


class SessionsDouble:
    def __init__(self) -> None:
        self.sessions: dict[int, object] = {}

    def get(self) -> int:
        session = len(self.sessions) + 100
        self.sessions[session] = object()
        return session

    def remove(self, session: int) -> None:
        self.sessions.pop(session, None)


class ScoringEngineDouble:
    """What `request_score` uses of lmdeploy's AsyncEngine: `tokenizer`, `session_mgr`,
    `preprocess` (renders `<user>` + the assistant text) and `generate` (one scripted step)."""

    def __init__(
        self,
        tokenizer: GreedyTokenizer,
        step: dict[int, float] | None,
        *,
        finish: str = "length",
        suffix: str = "",
        fail: BaseException | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.session_mgr = SessionsDouble()
        self.step = step
        self.finish = finish
        self.suffix = suffix
        self.fail = fail
        self.preprocessed: list[Any] = []
        self.generated = 0

    async def preprocess(self, messages: Any, session_id: int, gen_config: Any) -> Any:
        if self.fail is not None:
            raise self.fail
        prompt = "<user>" + messages[-1]["content"] + self.suffix
        request = SimpleNamespace(
            session=session_id,
            inputs={"prompt": prompt, "input_ids": [1, *self.tokenizer.encode(prompt[6:])]},
            messages=messages,
            gen_config=gen_config,
        )
        self.preprocessed.append(request)
        return request

    async def generate(self, request: Any, stream_response: bool = True) -> AsyncIterator[Any]:
        assert stream_response is False
        self.generated += 1
        logprobs = [self.step] if self.step is not None else None
        yield SimpleNamespace(response="x", token_ids=[3], logprobs=logprobs, finish_reason=None)
        yield SimpleNamespace(response="", token_ids=[], logprobs=None, finish_reason=self.finish)
        self.session_mgr.remove(request.session)


def _score(engine: ScoringEngineDouble, text: str = PREFIX + 'Unsafe"}') -> ScoreOutcome:
    user = [{"role": "user", "content": [{"type": "image_data", "image_data": {"data": IMAGE}}]}]
    return asyncio.run(request_score(engine, user, text, config="scoring-config"))


IMAGE = Image.new("RGB", (4, 4))
STEP = {SEPARATE.ids["Unsafe"]: -0.4, SEPARATE.ids["Safe"]: -1.2}


def test_request_score_sends_the_partial_answer_and_scores_the_step() -> None:
    engine = ScoringEngineDouble(SEPARATE, STEP)
    outcome = _score(engine)
    assert outcome.value == pytest.approx(normalised_unsafe(-0.4, -1.2))
    [request] = engine.preprocessed
    assert request.messages[-1] == {"role": "assistant", "content": PREFIX}
    assert request.messages[0]["content"][0]["image_data"]["data"] is IMAGE
    assert request.gen_config == "scoring-config"
    assert engine.session_mgr.sessions == {}


def test_request_score_with_a_merged_quote_cuts_the_answer_before_it() -> None:
    step = {MERGED.ids['"Unsafe']: -2.0, MERGED.ids['"Safe']: -0.1}
    engine = ScoringEngineDouble(MERGED, step)
    assert _score(engine).value == pytest.approx(normalised_unsafe(-2.0, -0.1))
    assert engine.preprocessed[0].messages[-1]["content"] == '{"rating": '


def test_no_rating_or_a_split_word_sends_no_request() -> None:
    engine = ScoringEngineDouble(SEPARATE, STEP)
    assert _score(engine, "no verdict here") == ScoreOutcome.none(RATING_NOT_FOUND)
    split = ScoringEngineDouble(SPLIT, STEP)
    assert _score(split) == ScoreOutcome.none(SEVERAL_TOKENS)
    assert engine.preprocessed == [] and split.preprocessed == []


def test_a_prompt_that_does_not_continue_the_answer_is_not_generated() -> None:
    engine = ScoringEngineDouble(SEPARATE, STEP, suffix="<|im_end|>\n")
    assert _score(engine) == ScoreOutcome.none(NOT_CONTINUED)
    assert engine.generated == 0 and engine.session_mgr.sessions == {}


@pytest.mark.parametrize(
    "engine",
    [
        ScoringEngineDouble(SEPARATE, STEP, fail=RuntimeError("preprocess_failed\nmore")),
        ScoringEngineDouble(SEPARATE, STEP, finish="abort"),
        ScoringEngineDouble(SEPARATE, STEP, finish="error"),
        ScoringEngineDouble(SEPARATE, None),
    ],
    ids=["raises", "aborted", "error", "no-logprobs"],
)
def test_a_failing_scoring_request_only_costs_the_score(engine: ScoringEngineDouble) -> None:
    assert _score(engine) == ScoreOutcome.none(REQUEST_FAILED)


def test_a_rating_outside_the_returned_logprobs_gives_no_score() -> None:
    engine = ScoringEngineDouble(SEPARATE, {SEPARATE.ids["Safe"]: 0.0})
    assert _score(engine) == ScoreOutcome.none(NOT_IN_TOP)
