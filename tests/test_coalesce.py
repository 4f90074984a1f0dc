"""No image judged twice: identical model inputs in flight share one engine call.

Through the real Processor and engine window, with an engine double that counts the images it
is asked about and holds every call until the test opens its gate, so that all copies are in
flight together. Also `moderator scan` end to end on 6 images x 8 copies.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from PIL import Image

from moderator.cli.main import main
from moderator.engine.base import EngineRequest, EngineResult
from moderator.engine.fake import FakeEngine
from moderator.errors import ErrorCode
from moderator.events.verdict import Assessment
from moderator.obs.telemetry import Telemetry
from moderator.obs.tracing import EVENT_SPAN, TRACER_NAME, new_tracer_provider
from moderator.pipeline.coalesce import judgement_key
from moderator.policy.bundled import write_default_policy
from moderator.service import build_policies
from tests.coalesce_rig import (
    O1,
    O4,
    TENANTS,
    GatedEngine,
    Rig,
    policies_dir,
    rig_factory,
    until,
)
from tests.harness import png, settings_for
from tests.test_obs_http import samples


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    yield from rig_factory(tmp_path)


def test_copies_in_flight_make_one_engine_call(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    data = png(1, size=48)
    for n in range(8):
        rig.submit(f"copy-{n}", "strict", data)
    rig.release(8)
    assert (rig.engine.calls, rig.engine.items) == (1, 1)
    verdicts = list(rig.verdicts.values())
    assert len(verdicts) == 8
    # every copy has the model's answer, judged once: source `model`, decided by the policy
    assert {v.source for v in verdicts} == {"model"}
    assert all(v.assessment == O4 and v.decision == "block" for v in verdicts)
    assert rig.processor.coalescer.coalesced == 7
    # only the event that called the engine spent engine time
    assert sorted(v.timings_ms.infer > 0 for v in verdicts) == [False] * 7 + [True]
    # a copy after the answer is a cache hit: still one engine call
    rig.submit("later", "strict", data)
    assert until(lambda: "later" in rig.verdicts, 10)
    assert rig.verdicts["later"].source == "cache" and rig.engine.items == 1


def test_six_images_eight_copies_each_make_six_engine_calls(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    images = [png(seed, size=40) for seed in range(6)]
    for copy in range(8):
        for seed, data in enumerate(images):
            rig.submit(f"img{seed}-copy{copy}", "strict", data)
    rig.release(48)
    assert rig.engine.items == 6
    assert rig.processor.coalescer.coalesced == 42
    assert len(rig.verdicts) == 48 and all(v.error is None for v in rig.verdicts.values())
    by_image = Counter(v.object.sha256 for v in rig.verdicts.values())
    assert sorted(by_image.values()) == [8] * 6


def _decisions(rig: Rig, tenants: Sequence[str]) -> dict[str, str]:
    out = {}
    for tenant in tenants:
        policy = rig.policies.resolve(tenant, "default")
        assert policy is not None
        out[tenant] = policy.decide(O4)
    return out


@pytest.mark.parametrize(
    ("kind", "reads_policy", "calls"),
    [
        ("double", None, 2),  # an engine kind of no known capabilities: keyed on its prompt
        ("openai", None, 2),  # a guard engine reads the prompt
        ("fake", None, 1),  # the fake engine does not read it
        ("double", False, 1),  # declared by the caller
        ("double", True, 2),
    ],
)
def test_tenants_share_an_engine_call_only_when_the_model_input_is_the_same(
    make_rig: Callable[..., Rig], kind: str, reads_policy: bool | None, calls: int
) -> None:
    extra = {} if reads_policy is None else {"reads_policy": reads_policy}
    rig = make_rig(GatedEngine(kind), **extra)
    tenants = ("art", "strict", "strict_photo")
    data = png(3, size=48)
    for tenant in tenants:
        rig.submit(f"ev-{tenant}", tenant, data)
    rig.release(3)
    assert rig.engine.items == calls
    if calls == 2:  # each distinct prompt reached the engine once
        prompts = {t: rig.policies.resolve(t, "default").prompt for t in tenants}  # type: ignore[union-attr]
        assert prompts["strict"] == prompts["strict_photo"] != prompts["art"]
        assert sorted(rig.engine.prompts) == sorted({prompts["art"], prompts["strict"]})
    # one answer, each tenant's own decision from it
    want = _decisions(rig, tenants)
    assert len(set(want.values())) == 3
    got = {t: rig.verdicts[f"ev-{t}"] for t in tenants}
    assert {t: v.decision for t, v in got.items()} == want
    assert all(v.assessment == O4 and v.source == "model" for v in got.values())
    assert {t: v.policy.version for t, v in got.items()} == {
        t: rig.policies.resolve(t, "default").version  # type: ignore[union-attr]
        for t in tenants
    }


def test_with_cache_scope_tenant_no_tenant_is_answered_from_anothers_call(
    make_rig: Callable[..., Rig],
) -> None:
    """`cache.scope: tenant`: the fake engine's answers would be shared by every tenant (see
    above); keyed per tenant, each tenant's copy is judged, and only its own later copy hits."""
    rig = make_rig(GatedEngine("fake"), per_tenant=True)
    tenants = ("art", "strict", "strict_photo")
    data = png(3, size=48)
    for tenant in tenants:
        rig.submit(f"ev-{tenant}", tenant, data)
    rig.release(3)
    assert rig.engine.items == 3 and rig.coalesced() == 0
    assert {rig.verdicts[f"ev-{t}"].source for t in tenants} == {"model"}
    rig.submit("again-art", "art", data)
    assert until(lambda: "again-art" in rig.verdicts, 10)
    assert rig.verdicts["again-art"].source == "cache" and rig.engine.items == 3


def test_an_engine_failure_reaches_every_waiter_and_is_not_cached(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.engine.fail = True
    data = png(5, size=48)
    for n in range(5):
        rig.submit(f"copy-{n}", "strict" if n % 2 else "strict_photo", data)  # one prompt
    rig.release(5)
    assert rig.engine.items == 1
    verdicts = list(rig.verdicts.values())
    assert all(v.error is not None and v.error.code == ErrorCode.ENGINE_ERROR for v in verdicts)
    assert {v.source for v in verdicts} == {"error"}
    assert all(v.model is not None for v in verdicts)  # the engine was called, and failed
    # each decided by its own policy's on_error (both `review` here)
    on_error = {
        t: rig.policies.resolve(t, "default").on_error(ErrorCode.ENGINE_ERROR)  # type: ignore[union-attr]
        for t in ("strict", "strict_photo")
    }
    assert all(v.decision == on_error[v.tenant_id] for v in verdicts)
    # errors are not cached: the next copy is judged again
    rig.engine.fail = False
    rig.submit("retry", "strict", data)
    assert until(lambda: "retry" in rig.verdicts, 10)
    assert rig.verdicts["retry"].source == "model" and rig.engine.items == 2


def test_a_waiters_own_fetch_or_decode_failure_is_its_own(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    data = png(6, size=48)
    for n in range(4):
        rig.submit(f"copy-{n}", "strict", data)
    rig.submit("broken", "strict", data[: len(data) // 2])  # truncated: cannot decode
    rig.submit("missing", "strict", None)
    rig.release(4)
    assert rig.engine.items == 1
    assert all(rig.verdicts[f"copy-{n}"].source == "model" for n in range(4))
    assert rig.processor.coalescer.coalesced == 3
    broken, missing = rig.verdicts["broken"].error, rig.verdicts["missing"].error
    assert broken is not None and broken.code == ErrorCode.CORRUPT_IMAGE
    assert missing is not None and missing.code == ErrorCode.OBJECT_NOT_FOUND


def _animation(colors: Sequence[tuple[int, int, int]]) -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in colors]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def _by_color(image: Image.Image) -> Assessment:
    red, _, blue = image.convert("RGB").getpixel((4, 4))  # type: ignore[misc]
    return O4 if red > blue else O1


def test_an_animation_is_judged_once_and_cached_per_frame(make_rig: Callable[..., Rig]) -> None:
    """The cache keeps every frame's assessment: a later event under another policy decides
    from all frames, not from the frame that was strictest under the first policy."""
    rig = make_rig(GatedEngine(answer=_by_color), reads_policy=False)
    data = _animation([(250, 0, 0), (0, 0, 250)])  # an O4 frame, then an O1 frame
    for n in range(3):
        rig.submit(f"first-{n}", "hate_ok", data)
    rig.release(4)  # the leader's two frames at the engine, two events coalesced
    assert rig.engine.items == 2  # both frames, once
    first = rig.verdicts["first-0"]
    assert first.assessment == O4 and first.decision == "block"  # the O1 frame is allowed
    rig.submit("second", "nudity_ok", data)
    assert until(lambda: "second" in rig.verdicts, 10)
    second = rig.verdicts["second"]
    assert second.source == "cache" and rig.engine.items == 2
    assert second.assessment == O1 and second.decision == "block"  # the O4 frame is allowed


def test_waiters_hold_no_image_bytes(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    data = png(7, size=48)
    for n in range(6):
        rig.submit(f"copy-{n}", "strict", data)
    one_image = 48 * 48 * 4  # the leader's decoded frame (input size 64: not resized)
    in_flight = until(lambda: rig.engine.items + rig.coalesced() >= 6, 5)
    # while the leader's engine call runs, only its frame is held (a waiter gives its bytes
    # back right after joining)
    held_one = until(lambda: rig.processor.buffered_bytes == one_image, 5)
    held = rig.processor.buffered_bytes
    rig.release(6)
    assert in_flight and held_one, held
    assert rig.processor.buffered_bytes == 0


def test_a_coalesced_event_says_so_in_its_spans_and_metrics(
    make_rig: Callable[..., Rig],
) -> None:
    exporter = InMemorySpanExporter()
    provider = new_tracer_provider(instance_id="test-0")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry()
    try:
        rig = make_rig(tracer=provider.get_tracer(TRACER_NAME), metrics=telemetry.metrics)
        data = png(8, size=48)
        for n in range(3):
            rig.submit(f"copy-{n}", "strict", data)
        rig.release(3)
        assert until(lambda: len(_event_spans(exporter)) == 3, 5)
        events = _event_spans(exporter)
        coalesced = {
            e for e, s in events.items() if (s.attributes or {}).get("moderator.coalesced")
        }
        (leader,) = set(events) - coalesced
        assert len(coalesced) == 2
        assert (events[leader].attributes or {})["moderator.coalesce.waiters"] == 2
        leader_ctx = events[leader].get_span_context()
        waits = [s for s in exporter.get_finished_spans() if s.name == "moderator.coalesce"]
        assert len(waits) == 2
        for wait in waits:
            assert [link.context for link in wait.links] == [leader_ctx]
            assert wait.parent is not None
            assert wait.parent.span_id in {events[e].get_span_context().span_id for e in coalesced}
        for e in coalesced:
            names = {
                s.name
                for s in exporter.get_finished_spans()
                if s.parent == events[e].get_span_context()
            }
            assert "moderator.infer" not in names and "moderator.coalesce" in names
        assert samples(telemetry)[("moderator_coalesced_total", ())] == 2
    finally:
        provider.shutdown()


def _event_spans(exporter: InMemorySpanExporter) -> dict[str, Any]:
    return {
        str((s.attributes or {})["messaging.message.id"]): s
        for s in exporter.get_finished_spans()
        if s.name == EVENT_SPAN
    }


def test_the_key_is_the_image_the_model_input_and_the_model(tmp_path: Path) -> None:
    registry = build_policies(settings_for(policies_dir(tmp_path)))
    try:
        art, strict, photo = (registry.resolve(t, "default") for t in TENANTS if "_ok" not in t)
        assert art is not None and strict is not None and photo is not None
        assert strict.version != photo.version and strict.prompt == photo.prompt

        def key(policy: Any, reads: bool, sha: str = "a" * 64, model: str = "m") -> Any:
            return judgement_key(sha, policy, model, reads_policy=reads)

        assert key(strict, True) == key(photo, True) != key(art, True)
        assert key(strict, False) == key(photo, False) == key(art, False)
        assert key(strict, True) != key(strict, True, sha="b" * 64)
        assert key(strict, True) != key(strict, True, model="n")
    finally:
        registry.close()


def test_scan_of_six_images_eight_copies_each_calls_the_engine_six_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`moderator scan` (fake engine, 20 ms per call): the 42 copies come from the cache or
    from an engine call in flight, never from a call of their own."""
    seen: list[int] = []
    real = FakeEngine.classify

    def counting(self: FakeEngine, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        seen.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(FakeEngine, "classify", counting)
    monkeypatch.setenv("MODERATOR_ENGINE__FAKE__LATENCY_MS", "20")
    folder = tmp_path / "photos"
    folder.mkdir()
    for copy in range(8):
        for seed in range(6):
            (folder / f"c{copy}-img{seed}.png").write_bytes(png(seed, size=40))
    policies = tmp_path / "policies"
    write_default_policy(policies)
    out = tmp_path / "verdicts.jsonl"
    argv = [
        "scan",
        str(folder),
        "--engine",
        "fake",
        "--policies",
        str(policies),
        "--output",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 48 and all(line["error"] is None for line in lines)
    assert sum(seen) == 6
    sources = Counter(line["source"] for line in lines)
    assert sources["cache"] + sources["model"] == 48
    assert sources["cache"] + (sources["model"] - 6) == 42
