from __future__ import annotations

import pytest

from moderator.errors import ErrorCode
from moderator.events.verdict import Assessment
from moderator.ingest.flow import FlowGate
from moderator.pipeline.assemble import FrameOutcome, ObjectFacts, error_outcome, strictest
from moderator.pipeline.cache import Judged, VerdictCache
from moderator.policy.keys import unsafe_key_reason


def test_gate_hysteresis() -> None:
    gate = FlowGate(high_items=10, low_items=5, high_bytes=100, low_bytes=50)
    assert gate.update(9, 0) is None
    assert gate.update(10, 0) == "pause"
    assert gate.update(7, 0) is None  # between the marks: stay paused
    assert gate.update(5, 60) is None  # bytes still above the low mark
    assert gate.update(5, 50) == "resume"
    assert gate.update(0, 100) == "pause"


def test_cache_is_bounded_lru() -> None:
    cache = VerdictCache(2)
    a = Assessment(rating="Safe", category="NA: None applying")
    judged = Judged((a,), ObjectFacts(sha256="1" * 64, format="PNG", width=2, height=3))
    cache.put(("1", "v", "m"), judged)
    cache.put(("2", "v", "m"), judged)
    assert cache.get(("1", "v", "m")) == judged  # 1 is now most recent
    cache.put(("3", "v", "m"), judged)
    assert cache.get(("2", "v", "m")) is None
    assert len(cache) == 2 and cache.hits == 1 and cache.misses == 1
    disabled = VerdictCache(0)
    disabled.put(("1", "v", "m"), judged)
    assert disabled.get(("1", "v", "m")) is None


def test_strictest_frame_wins() -> None:
    safe = FrameOutcome("allow", Assessment(rating="Safe", category="NA: None applying"))
    unsafe = FrameOutcome(
        "block", Assessment(rating="Unsafe", category="O4: Nudity Content", score=0.7)
    )
    err = error_outcome(ErrorCode.ENGINE_TIMEOUT, "slow", "review")
    assert strictest([safe, unsafe, err]) is unsafe
    assert strictest([safe, err]) is err
    review = FrameOutcome(
        "review", Assessment(rating="Unsafe", category="O9: Disasters or Emergencies")
    )
    assert strictest([err, review]) is review  # equal severity: the assessment wins


@pytest.mark.parametrize("key", ["/etc/passwd", "acme/../other/x.jpg", "acme/a\x00.jpg", "a\nb"])
def test_unsafe_keys(key: str) -> None:
    assert unsafe_key_reason(key) is not None
