"""A minimal policy engine: one YAML file per tenant, Unsafe → block, errors → `on_error`.

File format (policies/<tenant>.yaml; every key optional):

    on_error: review            # or block / allow, or a map {error_code: action, default: review}
    allowed:
      buckets: [uploads]        # default: the tenant rule's buckets (see README)
      prefixes: ["acme/"]       # default with the key-prefix rule: "<tenant>/"
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import yaml

from moderator.errors import SECURITY_ERRORS, ConfigError, ErrorCode
from moderator.events.verdict import CATEGORIES, Assessment, Decision
from moderator.policy.keys import unsafe_key_reason

_ACTIONS = ("allow", "review", "block")
_PROMPT_HEAD = (
    "Assess the image for safety against the policy categories below and answer with JSON "
    "holding rating, category and rationale."
)


@dataclass(frozen=True)
class MinimalPolicy:
    tenant_id: str
    surface: str
    buckets: tuple[str, ...]
    prefixes: tuple[str, ...]
    error_actions: Mapping[str, Decision] = field(default_factory=dict)
    default_error_action: Decision = "review"
    categories: tuple[str, ...] = CATEGORIES
    prompt: str = _PROMPT_HEAD + "\n" + "\n".join(CATEGORIES)

    @cached_property
    def full_hash(self) -> str:
        doc = {
            "kind": "minimal/v1",
            "tenant": self.tenant_id,
            "surface": self.surface,
            "buckets": list(self.buckets),
            "prefixes": list(self.prefixes),
            "on_error": dict(sorted(self.error_actions.items())),
            "on_error_default": self.default_error_action,
            "prompt": self.prompt,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    @cached_property
    def version(self) -> str:
        return self.full_hash[:16]

    @cached_property
    def prompt_sha256(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()

    def allows_object(self, bucket: str, key: str) -> bool:
        if unsafe_key_reason(key) is not None or bucket not in self.buckets:
            return False
        return not self.prefixes or any(key.startswith(p) for p in self.prefixes)

    def decide(self, assessment: Assessment) -> Decision:
        return "block" if assessment.rating == "Unsafe" else "allow"

    def on_error(self, code: ErrorCode) -> Decision:
        action = self.error_actions.get(code.value, self.default_error_action)
        if code in SECURITY_ERRORS and action == "allow":
            return "review"  # never allow on a security error, whatever the file says
        return action


class MinimalPolicyProvider:
    """Loads `<dir>/*.yaml` once. `default.yaml` supplies defaults and the unknown-tenant policy."""

    def __init__(
        self,
        directory: Path,
        *,
        upload_buckets: tuple[str, ...],
        bucket_map: Mapping[str, str] | None = None,
        default_for_unknown: bool = False,
    ) -> None:
        self._bucket_map = dict(bucket_map or {})
        self._upload_buckets = upload_buckets
        self._default_for_unknown = default_for_unknown
        if not directory.is_dir():
            raise ConfigError(f"policies.dir: {directory} is not a directory")
        self._docs = {p.stem: _read(p) for p in sorted(directory.glob("*.yaml"))}
        if "default" not in self._docs:
            raise ConfigError(f"policies.dir: {directory} has no default.yaml")
        self._cache: dict[tuple[str, str], MinimalPolicy] = {}

    def resolve(self, tenant_id: str, surface: str) -> MinimalPolicy | None:
        if tenant_id not in self._docs and not self._default_for_unknown:
            return None
        return self._compiled(tenant_id, surface)

    def fallback(self, tenant_id: str, surface: str) -> MinimalPolicy:
        """The default policy, used to decide errors for events no tenant policy covers."""
        return self._compiled("default", surface, as_tenant=tenant_id)

    def _compiled(
        self, tenant_id: str, surface: str, as_tenant: str | None = None
    ) -> MinimalPolicy:
        name = as_tenant or tenant_id
        cached = self._cache.get((name, surface))
        if cached is not None:
            return cached
        doc = {**self._docs["default"], **self._docs.get(tenant_id, {})}
        allowed = cast(dict[str, Any], doc.get("allowed") or {})
        if self._bucket_map:
            buckets = tuple(b for b, t in self._bucket_map.items() if t == name)
            prefixes: tuple[str, ...] = ()
        else:
            buckets, prefixes = self._upload_buckets, (f"{name}/",)
        buckets = tuple(allowed.get("buckets", buckets))
        prefixes = tuple(allowed.get("prefixes", prefixes))
        actions, default_action = _error_actions(doc.get("on_error", "review"), tenant_id)
        policy = MinimalPolicy(name, surface, buckets, prefixes, actions, default_action)
        self._cache[(name, surface)] = policy
        return policy


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read policy: {str(exc).splitlines()[0]}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a policy must be a mapping")
    return doc


def _error_actions(raw: Any, tenant: str) -> tuple[dict[str, Decision], Decision]:
    codes = {c.value for c in ErrorCode}
    if isinstance(raw, str):
        return {}, _action(raw, tenant, "on_error")
    if not isinstance(raw, dict):
        raise ConfigError(f"policy {tenant}: on_error must be an action or a map")
    default = _action(raw.get("default", "review"), tenant, "on_error.default")
    actions: dict[str, Decision] = {}
    for code, action in raw.items():
        if code == "default":
            continue
        if code not in codes:
            raise ConfigError(f"policy {tenant}: on_error.{code}: unknown error code")
        actions[code] = _action(action, tenant, f"on_error.{code}")
    return actions, default


def _action(value: Any, tenant: str, where: str) -> Decision:
    if value not in _ACTIONS:
        raise ConfigError(f"policy {tenant}: {where}: must be one of allow, review, block")
    return cast(Decision, value)
