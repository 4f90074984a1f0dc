"""Object-key, key-prefix and bucket-name sanity checks shared by every policy implementation
and by the settings (pure)."""

from __future__ import annotations

import re

# S3's rule for bucket names (the one AWS and MinIO enforce for new buckets): 3 to 63
# characters, no two dots in a row, not an IPv4 address.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
BUCKET_NAME_RULE = (
    "3 to 63 lower-case letters, digits, '.' and '-', starting and ending with a letter or "
    "digit, no '..', not an IP address"
)


def unsafe_key_reason(key: str) -> str | None:
    """Why a key may not be fetched for any tenant (None when it is fine)."""
    if key.startswith("/"):
        return "absolute key"
    if any(part == ".." for part in key.split("/")):
        return "key contains '..'"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        return "key contains control characters"
    return None


def bucket_name_problem(bucket: str) -> str | None:
    """Why `bucket` cannot name an S3 bucket (None when it can), the name quoted."""
    if _BUCKET.fullmatch(bucket) and ".." not in bucket and not _IPV4.fullmatch(bucket):
        return None
    return f"{bucket[:70]!r} is not a bucket name: {BUCKET_NAME_RULE}"


def prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot be an allowed key prefix (None when it can), the prefix quoted.

    A prefix is a folder: it ends with `/`. A key is matched by its first characters, so
    `gam` would also match `gamma/...`, another tenant's keys.
    """
    shown = repr(prefix[:70])
    if not prefix:
        return f"{shown}: empty prefix (use prefixes: [] for any key)"
    if ".." in prefix:
        return f"{shown}: contains '..'"
    reason = unsafe_key_reason(prefix)
    if reason is not None:
        return f"{shown}: {reason}"
    if not prefix.endswith("/"):
        return (
            f"{shown} must end with '/' (as written it also matches any key starting with "
            f"{shown}, such as {prefix[:70] + '-other/...'!r}); write {prefix[:70] + '/'!r}"
        )
    return None
