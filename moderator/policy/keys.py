"""Object-key sanity checks shared by every policy implementation (pure)."""

from __future__ import annotations


def unsafe_key_reason(key: str) -> str | None:
    """Why a key may not be fetched for any tenant (None when it is fine)."""
    if key.startswith("/"):
        return "absolute key"
    if any(part == ".." for part in key.split("/")):
        return "key contains '..'"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        return "key contains control characters"
    return None
