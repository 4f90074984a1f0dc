"""A resolved policy compiled for the pipeline: prompt, category enum, decisions, version. Pure.

The version is a hash of the compiled artefacts that can change a decision or the model's
answer (prompt, decision table, locations, tenant), and nothing else: the surface label, the
inheritance chain and the metadata (description, owner, DSA mapping) are left out, so two
surfaces that compile to the same rules share a version and a verdict-cache entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from moderator.errors import ErrorCode
from moderator.events.verdict import CATEGORIES, Assessment, Decision
from moderator.policy.decide import decide, decision_table_json, error_decision
from moderator.policy.keys import unsafe_key_reason
from moderator.policy.model import ResolvedPolicy
from moderator.policy.prompt import render_prompt

if TYPE_CHECKING:
    from moderator.policy.base import CompiledPolicy

HASH_SCHEMA = "moderator.policy/compiled-v1"
# The cached properties that do not depend on the surface label (see with_surface).
_SURFACE_FREE = ("_document", "_digest", "version", "prompt_sha256")


@dataclass(frozen=True)
class TenantPolicy:
    """One tenant's policy for one surface; implements `CompiledPolicy`."""

    resolved: ResolvedPolicy
    prompt: str
    # The surface reported in verdicts; None = the resolved one. Not hashed (see module doc).
    surface_label: str | None = None

    @property
    def tenant_id(self) -> str:
        return self.resolved.tenant_id

    @property
    def surface(self) -> str:
        return self.resolved.surface if self.surface_label is None else self.surface_label

    def with_surface(self, name: str) -> TenantPolicy:
        """The same compiled policy, reported under surface `name` (version unchanged).

        It shares this policy's hashes and document, computed once here: a registry hands out
        one of these per event whose surface has no policy of its own, and hashing the policy
        again for each would cost more than the rest of the event's bookkeeping.
        """
        other = dataclasses.replace(self, surface_label=name)
        for attr in _SURFACE_FREE:
            # cached_property stores its value in the instance's __dict__, frozen or not
            other.__dict__[attr] = getattr(self, attr)
        return other

    @property
    def categories(self) -> tuple[str, ...]:
        """All ten trained category strings: the model keeps its taxonomy whatever the modes."""
        return CATEGORIES

    def hash_document(self) -> dict[str, Any]:
        """What `full_hash` covers, as canonical JSON-ready data."""
        return {
            "schema": HASH_SCHEMA,
            "tenant_id": self.resolved.tenant_id,
            "prompt": self.prompt,
            "decision_table": decision_table_json(self.resolved),
            "buckets": list(self.resolved.buckets),
            "prefixes": list(self.resolved.prefixes),
        }

    def document(self) -> dict[str, Any]:
        """The hash document, as the audit record carries it (built once per policy)."""
        return self._document

    @cached_property
    def _document(self) -> dict[str, Any]:
        return self.hash_document()

    @cached_property
    def _digest(self) -> tuple[str, int]:
        """The SHA-256 and the size of the hash document as compact, sorted UTF-8 JSON: one
        serialisation for `full_hash` and for `document_bytes` (`document_problem`)."""
        text = json.dumps(
            self.hash_document(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        data = text.encode("utf-8")
        return hashlib.sha256(data).hexdigest(), len(data)

    @property
    def full_hash(self) -> str:
        return self._digest[0]

    @property
    def document_bytes(self) -> int:
        """About what every audit record spends on this policy's document."""
        return self._digest[1]

    @cached_property
    def version(self) -> str:
        return self.full_hash[:16]

    @cached_property
    def prompt_sha256(self) -> str:
        return hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()

    def allows_object(self, bucket: str, key: str) -> bool:
        if unsafe_key_reason(key) is not None or bucket not in self.resolved.buckets:
            return False
        prefixes = self.resolved.prefixes
        return not prefixes or any(key.startswith(prefix) for prefix in prefixes)

    def decide(self, assessment: Assessment) -> Decision:
        return decide(self.resolved, assessment)

    def on_error(self, code: ErrorCode) -> Decision:
        return error_decision(self.resolved, code)


MAX_DOCUMENT_BYTES = 256 * 1024
"""The most a compiled policy's document (its prompt, decision table and allowed objects) may
hold as JSON: every audit record carries it, and an audit record must fit in one Kafka record
(moderator.emit.records.MAX_RECORD_BYTES)."""


def document_problem(policy: TenantPolicy) -> str | None:
    """Why `policy` is too large to go into audit records (None when it is not)."""
    size = policy.document_bytes
    if size <= MAX_DOCUMENT_BYTES:
        return None
    surface = policy.resolved.surface
    return (
        f"the compiled policy of {policy.resolved.tenant_id}/{surface} is {size} bytes as JSON "
        f"(limit {MAX_DOCUMENT_BYTES}), and every audit record carries it: shorten its texts"
    )


def compile_policy(resolved: ResolvedPolicy) -> TenantPolicy:
    """Render the prompt and wrap the decision rules; deterministic (same input, same version)."""
    return TenantPolicy(resolved=resolved, prompt=render_prompt(resolved))


if TYPE_CHECKING:

    def _implements_the_port(policy: TenantPolicy) -> CompiledPolicy:
        return policy  # mypy checks TenantPolicy against the CompiledPolicy protocol
