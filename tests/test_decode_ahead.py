"""Decoding runs at most `fetch.decode_ahead` events ahead of the engine's answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from moderator.engine.factory import decode_ahead
from moderator.engine.fake import FakeEngine
from moderator.pipeline.ahead import DecodeAhead
from moderator.settings import EngineSettings, FetchSettings
from tests.coalesce_rig import GatedEngine, Rig, rig_factory, until
from tests.harness import png


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    yield from rig_factory(tmp_path)


def test_a_place_is_waited_for_until_one_is_given_back() -> None:
    ahead = DecodeAhead(2)
    ahead.enter()
    ahead.enter()
    entered = threading.Event()
    third = threading.Thread(target=lambda: (ahead.enter(), entered.set()), daemon=True)
    third.start()
    assert not entered.wait(0.2)
    ahead.leave()
    assert entered.wait(5)
    assert ahead.taken == 2


def test_no_limit_never_waits_and_a_limit_below_one_is_refused() -> None:
    ahead = DecodeAhead(None)
    for _ in range(1000):
        ahead.enter()
    assert ahead.taken == 1000
    with pytest.raises(ValueError, match="at least 1"):
        DecodeAhead(0)


def test_decoding_stops_at_the_limit_while_the_engine_holds_its_answers(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(decode_ahead=3)
    for i in range(12):
        rig.submit(f"e{i}", "strict", png(i))
    assert until(lambda: rig.window.pending == 3, 5)
    time.sleep(0.3)  # time enough for the other fetch workers to decode, were they let
    assert rig.window.pending == 3
    rig.release(3)
    assert sorted(rig.verdicts) == sorted(f"e{i}" for i in range(12))


def test_without_a_limit_every_event_is_decoded_at_once(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    for i in range(12):
        rig.submit(f"e{i}", "strict", png(i))
    assert until(lambda: rig.window.pending == 12, 5)
    rig.release(12)


def test_events_that_never_reach_the_engine_give_their_place_back(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(decode_ahead=1)
    rig.engine.gate.set()
    for i in range(5):
        rig.submit(f"broken{i}", "strict", b"\xff\xd8\xff" + bytes([i]) * 40)  # corrupt JPEGs
    for i in range(5):
        rig.submit(f"ok{i}", "strict", png(100 + i))
    assert until(lambda: len(rig.verdicts) == 10, 10), sorted(rig.verdicts)
    errors = {e: v.error.code for e, v in rig.verdicts.items() if v.error is not None}
    assert set(errors) == {f"broken{i}" for i in range(5)}
    assert rig.processor.decode_ahead.taken == 0


class SelfBatchingDouble(GatedEngine):
    """An engine that batches by itself, as the openai engine does."""

    max_calls = 80
    call_limit = 8


def test_the_default_limit_is_twice_what_the_engine_holds() -> None:
    fetch = FetchSettings()
    assert decode_ahead(SelfBatchingDouble(), EngineSettings(kind="openai"), fetch) == 160
    plain = EngineSettings(kind="fake", concurrency=2, batch_size=16)
    assert decode_ahead(FakeEngine(plain.fake), plain, fetch) == 64
    assert decode_ahead(FakeEngine(plain.fake), EngineSettings(kind="fake"), fetch) == max(
        2 * EngineSettings().concurrency * EngineSettings().batch_size, fetch.concurrency
    )
    many_workers = FetchSettings(concurrency=200)
    assert decode_ahead(FakeEngine(plain.fake), plain, many_workers) == 200
    assert decode_ahead(SelfBatchingDouble(), plain, FetchSettings(decode_ahead=5)) == 5
