"""Why an object is refused for a tenant: the `tenant_mismatch` message. Pure.

"s3://b/k is outside the tenant" leaves the reader to find out what the tenant may read; the
message names the tenant and its allowed locations (the compiled policy's buckets and key
prefixes, what `allows_object` checks), or the key's own problem (`..`, a leading `/`). It is
kept short: a verdict message is cut at 500 characters, and a tenant with many buckets or a
very long key must not push the reason out of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from moderator.policy.keys import unsafe_key_reason

WHERE_CHARS = 120  # the object's s3:// address, both ends kept
LOCATION_CHARS = 48  # one allowed location
LOCATIONS_SHOWN = 3


class Located(Protocol):
    """What is read of a compiled policy (`moderator.policy.base.CompiledPolicy` has it)."""

    @property
    def tenant_id(self) -> str: ...

    def document(self) -> dict[str, Any]: ...


def outside_tenant(policy: Located, bucket: str, key: str) -> str:
    """`s3://uploads/top.jpg is outside tenant acme (allowed: s3://uploads/acme/)`; for a key
    no tenant may read, the reason instead of the locations. At most about 400 characters."""
    where = _middle(f"s3://{bucket}/{key}", WHERE_CHARS)
    tenant = policy.tenant_id
    reason = unsafe_key_reason(key)
    if reason is not None:
        return f"{where} is refused for tenant {tenant}: {reason}"
    document = policy.document()
    allowed = allowed_locations(_strings(document, "buckets"), _strings(document, "prefixes"))
    return f"{where} is outside tenant {tenant} (allowed: {shown_locations(allowed)})"


def allowed_locations(buckets: Sequence[str], prefixes: Sequence[str]) -> list[str]:
    """Every `s3://bucket/prefix` a tenant may read (no prefixes: any key in the buckets)."""
    return [f"s3://{b}/{p}" for b in buckets for p in (prefixes or ("",))]


def shown_locations(locations: Sequence[str]) -> str:
    """The first few locations, each cut to a bounded length, and how many more there are."""
    if not locations:
        return "none"
    shown = [_middle(text, LOCATION_CHARS) for text in locations[:LOCATIONS_SHOWN]]
    more = len(locations) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _strings(document: Mapping[str, Any], name: str) -> list[str]:
    found = document.get(name)
    return [v for v in found if isinstance(v, str)] if isinstance(found, list | tuple) else []


def _middle(text: str, width: int) -> str:
    """`text` cut in the middle to `width` characters: both the bucket and the file name stay."""
    if len(text) <= width:
        return text
    head = (width - 3) // 2
    return text[:head] + "..." + text[-(width - 3 - head) :]
