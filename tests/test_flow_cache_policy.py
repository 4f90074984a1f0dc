from __future__ import annotations

from pathlib import Path

import pytest

from moderator.errors import ConfigError, ErrorCode
from moderator.events.verdict import Assessment
from moderator.ingest.flow import FlowGate
from moderator.pipeline.assemble import FrameOutcome, error_outcome, strictest
from moderator.pipeline.cache import VerdictCache
from moderator.policy.keys import unsafe_key_reason
from moderator.policy.minimal import MinimalPolicyProvider


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
    cache.put(("1", "v", "m"), a)
    cache.put(("2", "v", "m"), a)
    assert cache.get(("1", "v", "m")) == a  # 1 is now most recent
    cache.put(("3", "v", "m"), a)
    assert cache.get(("2", "v", "m")) is None
    assert len(cache) == 2 and cache.hits == 1 and cache.misses == 1
    disabled = VerdictCache(0)
    disabled.put(("1", "v", "m"), a)
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


def _policies(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


def test_minimal_policy(tmp_path: Path) -> None:
    d = _policies(
        tmp_path,
        default="on_error: review\n",
        acme="on_error: {default: block, object_not_found: allow, tenant_mismatch: allow}\n",
    )
    provider = MinimalPolicyProvider(d, upload_buckets=("uploads",))
    acme = provider.resolve("acme", "post")
    assert acme is not None
    assert acme.allows_object("uploads", "acme/x.jpg")
    assert not acme.allows_object("uploads", "other/x.jpg")
    assert not acme.allows_object("private", "acme/x.jpg")
    assert not acme.allows_object("uploads", "acme/../other/x.jpg")
    assert acme.on_error(ErrorCode.OBJECT_NOT_FOUND) == "allow"
    assert acme.on_error(ErrorCode.CORRUPT_IMAGE) == "block"
    assert acme.on_error(ErrorCode.TENANT_MISMATCH) == "review"  # security: never allow
    assert (
        acme.decide(Assessment(rating="Unsafe", category="O1: Hate, Humiliation, Harassment"))
        == "block"
    )
    assert acme.decide(Assessment(rating="Safe", category="NA: None applying")) == "allow"
    assert acme.version != provider.resolve("acme", "profile_photo").version  # type: ignore[union-attr]
    assert provider.resolve("nobody", "post") is None
    assert provider.fallback("nobody", "post").on_error(ErrorCode.UNKNOWN_TENANT) == "review"
    opted = MinimalPolicyProvider(d, upload_buckets=("uploads",), default_for_unknown=True)
    other = opted.resolve("nobody", "post")
    assert other is not None and other.allows_object("uploads", "nobody/a.jpg")


def test_minimal_policy_bucket_map(tmp_path: Path) -> None:
    d = _policies(tmp_path, default="", acme="")
    provider = MinimalPolicyProvider(
        d, upload_buckets=("uploads",), bucket_map={"acme-b": "acme", "z-b": "z"}
    )
    acme = provider.resolve("acme", "post")
    assert acme is not None and acme.allows_object("acme-b", "any/key.jpg")
    assert not acme.allows_object("z-b", "any/key.jpg")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("on_error: maybe\n", "on_error"),
        ("on_error: {bogus: block}\n", "bogus"),
        ("- 1\n", "mapping"),
    ],
)
def test_minimal_policy_errors(tmp_path: Path, text: str, needle: str) -> None:
    d = _policies(tmp_path, default="", acme=text)
    with pytest.raises(ConfigError, match=needle):
        MinimalPolicyProvider(d, upload_buckets=("u",)).resolve("acme", "post")


def test_minimal_policy_needs_default(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"default\.yaml"):
        MinimalPolicyProvider(tmp_path, upload_buckets=("u",))
