"""Opening the audit database: URL normalisation, SQLite pragmas and transaction modes."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from moderator.audit.errors import AuditUnavailable
from moderator.errors import ConfigError
from moderator.masking import SECRET_KEYS, mask_passwords, mask_values

WRITE = {"audit_write": True}
"""Execution options for a connection that will write: on SQLite its transactions start with
BEGIN IMMEDIATE, so two writers serialise up front instead of failing at their first write."""

BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10
RAW_AT = "audit.url: write an @ in the user name or password as %40"
POSTGRES_MISSING = (
    "audit.url: a PostgreSQL store needs the postgres extra ({module} is missing): "
    "pip install 'moderator[postgres]'"
)


def normalize_url(url: str) -> URL:
    """Parse an audit URL: `sqlite:///path`, `sqlite://` (in memory) or PostgreSQL. Plain
    `postgresql://` and `postgres://` URLs get the psycopg (3) driver; other drivers are refused.
    Errors are one line, the URL's password shown as `***`. A raw "@" in the user name or
    password is refused: the driver would split the URL at another "@" than we do, and print
    the rest of the password as the host."""
    shown = _shown_raw(url)
    try:
        if url.startswith("postgres://"):
            url = "postgresql://" + url.removeprefix("postgres://")
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"audit.url: not a database URL: {shown!r} (use sqlite:///path or postgresql://...)"
        ) from exc
    except ValueError as exc:  # a port that is not a number, an unclosed IPv6 bracket
        raise ConfigError(f"audit.url: malformed host or port in {shown!r}") from exc
    if "@" in (parsed.username or "") or "@" in (parsed.host or ""):
        raise ConfigError(RAW_AT)
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ConfigError(f"audit.url: port {parsed.port} out of range in {shown!r}")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise ConfigError(
            f"audit.url: unsupported database {parsed.drivername!r} "
            "(use sqlite:///path or postgresql://...)"
        )
    return parsed


def _shown_raw(url: str) -> str:
    """A URL as typed, for an error line: whitespace and quotes %-encoded (so that the whole URL
    is one token to mask_passwords), passwords masked."""
    return mask_passwords(re.sub(r"[\s'\"<>]", lambda m: quote(m[0]), url))


def shown_url(url: URL) -> str:
    """A parsed URL for people: its password and its secret query parameters as `***`."""
    return mask_passwords(url.render_as_string(hide_password=True))


def hide_secrets(url: URL, text: str) -> str:
    """`text` (a driver's error, which may quote what it was given) with the URL's password and
    secret query values masked wherever they stand, and every URL password in it."""
    known = [url.password or ""]
    for key, value in url.query.items():
        if key.lower() in SECRET_KEYS:
            known.extend([value] if isinstance(value, str) else value)
    return mask_passwords(mask_values(text, known))


def is_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def create_audit_engine(url: URL) -> Engine:
    """An engine for the audit store; creates a SQLite file's parent directory. ConfigError
    when the PostgreSQL driver (the postgres extra) is not installed: every command that opens
    the store comes through here."""
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    connect_args = (
        {} if "connect_timeout" in url.query else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    )
    try:
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except ImportError as exc:  # SQLAlchemy imports the driver here, before any connection
        module = (exc.name or "psycopg").split(".")[0]
        raise ConfigError(POSTGRES_MISSING.format(module=module)) from exc


def _check_folder(path: Path, url: URL) -> None:
    """Create the database file's folder; AuditUnavailable naming the folder and this process's
    uid when it cannot be created, or the file is not there and cannot be (SQLite would only
    say `unable to open database file`)."""
    folder = path.absolute().parent
    why = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = f"cannot create or reach its folder {folder}: {exc.strerror or exc}"
    if why is None and not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
        why = f"cannot create it: its folder {folder} is not writable"
    if why is not None:
        uid = os.getuid() if hasattr(os, "getuid") else "?"
        raise AuditUnavailable(f"audit store {shown_url(url)}: {why} (by uid {uid})")


def _create_private(path: Path) -> None:
    """Create a new database file for its owner only: SQLite would create it (and its -wal and
    -shm files, which take the database's mode) as the umask allows, often readable by all,
    and the rows name users and objects. An existing file keeps its mode."""
    # There already (FileExistsError), or SQLite says what is wrong with the path.
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_engine(url: URL) -> Engine:
    memory = is_memory(url)
    if not memory:
        assert url.database is not None
        path = Path(url.database).expanduser()
        _check_folder(path, url)
        _create_private(path)
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if memory:
        kwargs["poolclass"] = StaticPool  # one shared connection: one in-memory database
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module (SQLAlchemy's documented recipe) so
        # that BEGIN is ours and can be IMMEDIATE for writers.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not memory:
                cursor.execute("PRAGMA journal_mode = WAL")
                # An audit row whose Kafka offset was committed must survive power loss.
                cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("audit_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine
