"""Bearer tokens of the audit HTTP API → the tenants a request may read.

A token is looked up by its SHA-256 hex in the scopes that `create_app` puts on `app.state`
(from audit.api_tokens); it names the tenants whose rows it may read (`*`: all).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from moderator.audit.read.api_errors import unauthorized
from moderator.audit.read.tokens import token_hash

ALL_TENANTS = "*"
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearerToken",
    description="a token whose SHA-256 hex is a key of audit.api_tokens",
)


@dataclass(frozen=True)
class Scope:
    """The tenants a token may read; None = all of them."""

    tenants: frozenset[str] | None

    def allows(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def restriction(self) -> tuple[str, ...] | None:
        """The store query's `tenant_ids` (None: unrestricted)."""
        return None if self.tenants is None else tuple(sorted(self.tenants))


def scopes_from_tokens(tokens: Mapping[str, Sequence[str]]) -> dict[str, Scope]:
    """audit.api_tokens (SHA-256 hex of a token → its tenants, or `*`) → scope by hash."""
    return {
        digest.strip().lower(): Scope(None if ALL_TENANTS in tenants else frozenset(tenants))
        for digest, tenants in tokens.items()
    }


def token_scope(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> Scope:
    """The caller's tenants, from `app.state.scopes`; 401 without a known token."""
    if credentials is None:
        raise unauthorized("missing bearer token")
    scopes: dict[str, Scope] = request.app.state.scopes
    found = scopes.get(token_hash(credentials.credentials))
    if found is None:
        raise unauthorized("unknown bearer token")
    return found


Auth = Annotated[Scope, Depends(token_scope)]
