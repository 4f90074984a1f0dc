"""Opening the audit store of the settings for a command that must not create it."""

from __future__ import annotations

from moderator.audit.db.connect import normalize_url, sqlite_path
from moderator.audit.db.store import AuditStore
from moderator.audit.errors import AuditUnavailable


def open_existing(url: str, *, write: bool = False) -> AuditStore:
    """The store at `url` (audit.url) for reading: read-only, never migrated (a SQLite file is
    opened `mode=ro`: its bytes and journal mode stay as they are); with `write` (retention),
    for writing, migrated. A SQLite file that does not exist is AuditUnavailable (exit 1), never
    a new, empty database; an in-memory URL, which would hold nothing, a ConfigError (exit 2)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(parsed)
        if not path.is_file():
            raise AuditUnavailable(f"audit store {url}: no such database file {path}")
    return AuditStore.open(url, read_only=not write)
