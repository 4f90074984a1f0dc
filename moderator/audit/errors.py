"""The audit package's exceptions."""

from __future__ import annotations

from moderator.errors import ConfigError, ModeratorError


class AuditError(ModeratorError):
    """Root of the audit store's runtime failures (the CLI exits 1)."""


class AuditUnavailable(AuditError):
    """The database cannot be reached or opened (`audit verify`: "could not verify", exit 1)."""


class SchemaVersionError(AuditError):
    """The database was migrated by a newer moderator, or is not an audit database."""


class InvalidQuery(ConfigError):
    """A query the caller got wrong (bad limit, sort, model or cursor): a usage error, exit 2."""
