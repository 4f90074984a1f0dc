"""The verdict cache and the in-flight table are consulted before the object is decoded.

Their key is the object's bytes (SHA-256), the model input and the model, so a hit or an event
joining a flight never decodes: it takes the facts its leader's decode found (format, size) and
keeps its own etag. A decode failure reaches every event waiting on the same bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from moderator.errors import ErrorCode
from moderator.fetch import decode
from moderator.pipeline import process
from tests.coalesce_rig import Rig, rig_factory, until
from tests.harness import png


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    yield from rig_factory(tmp_path)


class CountingDecode:
    """Wraps the real decode_image: counts calls, and can hold each until `gate` is set."""

    def __init__(self, gated: bool = False) -> None:
        self.calls = 0
        self.gate = threading.Event()
        if not gated:
            self.gate.set()

    def __call__(self, *args: Any, **kwargs: Any) -> decode.DecodedImage:
        self.calls += 1
        assert self.gate.wait(10), "decode gate never opened"
        return decode.decode_image(*args, **kwargs)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> CountingDecode:
    counting = CountingDecode()
    monkeypatch.setattr(process, "decode_image", counting)
    return counting


def test_a_cache_hit_is_answered_without_decoding(
    make_rig: Callable[..., Rig], decodes: CountingDecode
) -> None:
    rig = make_rig()
    data = png(21, size=48)
    rig.submit("first", "strict", data)
    rig.release(1)
    rig.submit("again", "strict", data)
    assert until(lambda: "again" in rig.verdicts, 10)
    first, again = rig.verdicts["first"], rig.verdicts["again"]
    assert again.source == "cache" and again.decision == first.decision
    assert decodes.calls == 1
    assert rig.engine.items == 1
    # The image's facts come from the cache; the object's etag stays its own.
    assert (again.object.format, again.object.width, again.object.height) == ("PNG", 48, 48)
    assert again.object.sha256 == first.object.sha256
    assert again.timings_ms.infer == 0


def test_waiters_take_their_leaders_facts_and_never_decode(
    make_rig: Callable[..., Rig], decodes: CountingDecode
) -> None:
    rig = make_rig()
    data = png(22, size=40)
    for n in range(5):
        rig.submit(f"copy-{n}", "strict", data)
    rig.release(5)
    assert decodes.calls == 1
    assert rig.processor.coalescer.coalesced == 4
    facts = {(v.object.format, v.object.width, v.object.height) for v in rig.verdicts.values()}
    assert facts == {("PNG", 40, 40)}
    # Every event fetched its object: a waiter's fetch time is its own, not 0.
    assert all(v.timings_ms.fetch > 0 for v in rig.verdicts.values())


def test_a_decode_failure_reaches_each_waiter_with_its_code(
    make_rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    held = CountingDecode(gated=True)  # the leader's decode waits until every copy has joined
    monkeypatch.setattr(process, "decode_image", held)
    rig = make_rig()
    broken = png(23, size=48)[:60]
    for n in range(4):
        rig.submit(f"broken-{n}", "strict", broken)
    assert until(lambda: rig.processor.coalescer.coalesced == 3, 5)
    held.gate.set()
    assert until(lambda: len(rig.verdicts) == 4, 10)
    assert held.calls == 1 and rig.engine.items == 0
    for verdict in rig.verdicts.values():
        assert verdict.source == "error"
        assert verdict.error is not None and verdict.error.code == ErrorCode.CORRUPT_IMAGE
        assert verdict.model is None
    # Nothing was cached: the same bytes are decoded (and fail) again.
    rig.submit("broken-later", "strict", broken)
    assert until(lambda: "broken-later" in rig.verdicts, 10)
    assert held.calls == 2
