"""The policy port: tenant + surface → a compiled policy that decides.

The pipeline only sees this interface; the policy engine behind it can change freely.
"""

from __future__ import annotations

from typing import Any, Protocol

from moderator.errors import ErrorCode
from moderator.events.verdict import Assessment, Decision


class CompiledPolicy(Protocol):
    """A tenant's policy compiled for one surface."""

    @property
    def tenant_id(self) -> str: ...

    @property
    def surface(self) -> str: ...

    @property
    def version(self) -> str:
        """Short hash covering everything that can change a decision (verdict-cache key part)."""
        ...

    @property
    def full_hash(self) -> str: ...

    @property
    def prompt(self) -> str: ...

    @property
    def prompt_sha256(self) -> str: ...

    @property
    def categories(self) -> tuple[str, ...]:
        """Category strings the model may answer with (structured-output enum)."""
        ...

    def document(self) -> dict[str, Any]:
        """What `full_hash` is the SHA-256 of (canonical JSON): prompt, decision table, ..."""
        ...

    def allows_object(self, bucket: str, key: str) -> bool:
        """Whether this tenant's events may reference s3://bucket/key (checked before any GET)."""
        ...

    def decide(self, assessment: Assessment) -> Decision: ...

    def on_error(self, code: ErrorCode) -> Decision: ...


class PolicyProvider(Protocol):
    def resolve(self, tenant_id: str, surface: str) -> CompiledPolicy | None:
        """The tenant's compiled policy, or None for an unknown tenant."""
        ...

    def fallback(self, tenant_id: str, surface: str) -> CompiledPolicy:
        """The policy that decides error verdicts for events no tenant policy covers."""
        ...

    def unknown_reason(self, tenant_id: str) -> str:
        """Why `resolve` has no policy for the tenant, for its `unknown_tenant` verdict."""
        ...
