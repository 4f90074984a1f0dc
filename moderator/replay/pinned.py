"""What a replay run pins in its plan so that a resumed run judges like the run it continues.

A plan records, when it is made, a digest of each setting that can change what a replayed
verdict says (the engine, tenancy, decode limits) and the version each tenant's policy compiles
to, in the replayed directory and in the one the report compares with. A resume compares them
with what it would run now and names what changed: a report that mixes two engines or two
policy versions under one header would be wrong without saying so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pydantic_core
from pydantic import BaseModel

from moderator.settings import Settings, TenancySettings

PINNED_SECTIONS = ("engine", "tenancy", "fetch", "policies.default_for_unknown")
"""The settings a replayed verdict depends on (dotted prefixes of the flattened settings)."""

PACING = (
    "engine.concurrency",
    "engine.batch_size",
    "engine.max_wait_ms",
    "engine.outage_wait_s",
    "engine.timeout_s",
    "engine.retries",
    "engine.fake.latency_ms",
    "engine.nudenet.threads",
    "engine.transformers.device",
    "engine.transformers.threads",
    "engine.transformers.warmup",
    "engine.lmdeploy.max_batch_size",
    "engine.lmdeploy.cache_max_entry_count",
    "engine.lmdeploy.vision_batch_size",
    "engine.lmdeploy.enable_prefix_caching",
    "engine.lmdeploy.tp",
    "engine.openai.api_key",
    "engine.openai.attempts",
    "engine.openai.max_in_flight",
    "engine.openai.adaptive",
    "engine.openai.latency_tolerance",
    "engine.openai.max_connections",
    "engine.openai.connect_timeout_s",
    "fetch.concurrency",
    "fetch.decode_ahead",
    "fetch.decode_workers",
    "fetch.decode_budget_bytes",
    "fetch.s3",
)
"""Settings under PINNED_SECTIONS that change how fast, where from, or how patiently, not what
an answer says (`--max-in-flight` changes fetch.concurrency on a resume): they may differ on a
resume."""

SHOWN = 3  # changes named in a refusal; the rest are counted


def pinned_settings(settings: Settings) -> dict[str, str]:
    """Each pinned setting's dotted name → a short digest of its value (values may be secret
    or long: the plan keeps neither)."""
    flat = dict(_flatten("", settings))
    return {
        key: _digest(value)
        for key, value in sorted(flat.items())
        if _under(key, PINNED_SECTIONS) and not _under(key, PACING)
    }


def changed_settings(planned: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """The pinned settings whose value differs; one known to only one side (a release that
    added or removed a setting) is not a change."""
    return [key for key in sorted(planned.keys() & now.keys()) if planned[key] != now[key]]


def policy_versions(directory: Path, tenancy: TenancySettings) -> dict[str, str]:
    """`tenant/surface` → the version its policy compiles to in `directory` (the tenants that
    compile; a directory that cannot be read has none)."""
    from moderator.errors import ConfigError
    from moderator.policy.check import check

    try:
        result = check(directory, tenancy)
    except ConfigError:
        return {}
    return {f"{t}/{s}": policy.version for (t, s), policy in sorted(result.policies.items())}


def changed_versions(planned: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """`tenant/surface OLD -> NEW` for each policy that compiles differently, was added or is
    gone."""
    lines = []
    for key in sorted(planned.keys() | now.keys()):
        old, new = planned.get(key, "none"), now.get(key, "none")
        if old != new:
            lines.append(f"{key} {old[:8]} -> {new[:8]}")
    return lines


def listed(items: list[str]) -> str:
    """The first SHOWN items, and how many more."""
    text = ", ".join(items[:SHOWN])
    return text if len(items) <= SHOWN else f"{text} and {len(items) - SHOWN} more"


def _flatten(prefix: str, model: BaseModel) -> Iterator[tuple[str, Any]]:
    """Each setting by its dotted name; a mapping (tenancy.bucket_map) is one setting."""
    for name in type(model).model_fields:
        key = f"{prefix}.{name}" if prefix else name
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _flatten(key, value)
        else:
            yield key, pydantic_core.to_jsonable_python(value)


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
