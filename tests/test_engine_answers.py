"""AnswerClock: when the engine last answered, and how long every call has failed since."""

from __future__ import annotations

from moderator.engine.answers import AnswerClock
from moderator.engine.base import EngineResult
from moderator.errors import ErrorCode
from moderator.events.verdict import Assessment

ANSWER = EngineResult(assessment=Assessment(rating="Safe", category="NA: None applying"))
DOWN = EngineResult(error_code=ErrorCode.ENGINE_ERROR, error_message="cannot reach")
TIMEOUT = EngineResult(error_code=ErrorCode.ENGINE_TIMEOUT, error_message="no answer")
BAD_IMAGE = EngineResult(error_code=ErrorCode.UNPARSEABLE_OUTPUT, error_message="not JSON")


def test_failures_count_from_the_first_since_the_last_answer() -> None:
    now = [100.0]
    clock = AnswerClock(lambda: now[0])
    assert (clock.answered, clock.failing_s()) == (False, 0.0)
    clock.record([DOWN])
    now[0] = 130.0
    assert (clock.answered, clock.failing_s()) == (False, 30.0)
    clock.record([ANSWER, DOWN])  # one answer in the call is an answer
    assert (clock.answered, clock.failing_s()) == (True, 0.0)
    clock.record(RuntimeError("CUDA error"))
    now[0] = 150.0
    clock.record([TIMEOUT])  # a later failure does not restart the count
    now[0] = 200.0
    assert (clock.answered, clock.failing_s()) == (True, 70.0)


def test_an_answer_the_policy_cannot_use_is_still_the_models_answer() -> None:
    clock = AnswerClock(lambda: 0.0)
    clock.record([BAD_IMAGE])
    assert clock.answered and clock.failing_s() == 0.0
