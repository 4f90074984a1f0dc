"""Opening the audit database: URL normalisation, SQLite pragmas and transaction modes."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool, StaticPool

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
IN_MEMORY = (
    "audit.url: {url} is an in-memory SQLite database, which keeps nothing once the process "
    "exits: name a file (sqlite:///path/to/audit.db) or postgresql://..."
)
URI_FILENAME = (
    "audit.url: {url}: SQLite URI filenames (file:..., uri=true) are not supported: name the "
    "file (sqlite:///path/to/audit.db)"
)


def normalize_url(url: str, *, memory: bool = False) -> URL:
    """Parse an audit URL: `sqlite:///path` or PostgreSQL (`sqlite://`, in memory, only with
    `memory`: tests; an audit.url in memory would lose every record). Plain `postgresql://`
    and `postgres://` URLs get the psycopg (3) driver; other drivers are refused. Errors are
    one line, the URL's password shown as `***`. A raw "@" in the user name or password is
    refused: the driver would split the URL at another "@" than we do, and print the rest of
    the password as the host."""
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
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite(parsed, shown, memory=memory)
    return parsed


def _check_sqlite(url: URL, shown: str, *, memory: bool) -> None:
    """ConfigError for a SQLite URL that names no file this code can open as one: an in-memory
    database (unless `memory`), in any of its spellings, or a URI filename."""
    if is_memory(url):
        if not memory:
            raise ConfigError(IN_MEMORY.format(url=shown))
        return
    if (url.database or "").startswith("file:") or "uri" in url.query or "mode" in url.query:
        raise ConfigError(URI_FILENAME.format(url=shown))


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
    """Whether a SQLite URL names an in-memory (or nameless, temporary) database: `sqlite://`,
    `sqlite:///:memory:`, `sqlite:///file::memory:?uri=true`, `...?mode=memory`."""
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return True
    path, _, options = database.removeprefix("file:").partition("?")
    return database.startswith("file:") and (path in ("", ":memory:") or "mode=memory" in options)


def create_audit_engine(url: URL, *, read_only: bool = False) -> Engine:
    """An engine for the audit store. ConfigError when the PostgreSQL driver (the postgres
    extra) is not installed: every command that opens the store comes through here. SQLite:
    a writer creates a missing file in an existing folder; `read_only` opens the file for
    reading only (`mode=ro`) and changes nothing in it or beside it but SQLite's own -shm."""
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, read_only=read_only)
    connect_args = (
        {} if "connect_timeout" in url.query else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    )
    try:
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except ImportError as exc:  # SQLAlchemy imports the driver here, before any connection
        module = (exc.name or "psycopg").split(".")[0]
        raise ConfigError(POSTGRES_MISSING.format(module=module)) from exc


def sqlite_path(url: URL) -> Path:
    """The file a (file, not in-memory) SQLite URL names."""
    return Path(url.database or "").expanduser()


def check_writable(url: str) -> None:
    """What opening `url` for writing would refuse, found before anything else runs and with
    nothing created: ConfigError for a bad URL or a SQLite folder that does not exist,
    AuditUnavailable for a SQLite file that cannot be created."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        _check_folder(sqlite_path(parsed), parsed)


def _check_folder(path: Path, url: URL) -> None:
    """For a writer: ConfigError when the database file's folder does not exist (a mistyped
    path gets no folders made for it); AuditUnavailable naming the folder and this process's
    uid when the file is not there and cannot be created (SQLite would only say `unable to
    open database file`)."""
    folder = path.absolute().parent
    try:
        found = folder.is_dir()
    except OSError as exc:
        _unavailable(url, f"cannot reach its folder {folder}: {exc.strerror or exc}")
    if not found:
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ConfigError(
            f"audit.url: {shown_url(url)}: the folder {folder} {what} "
            "(create it, or correct the path)"
        )
    if not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
        _unavailable(url, f"cannot create it: its folder {folder} is not writable")


def _unavailable(url: URL, why: str) -> NoReturn:
    uid = os.getuid() if hasattr(os, "getuid") else "?"
    raise AuditUnavailable(f"audit store {shown_url(url)}: {why} (by uid {uid})")


def _create_private(path: Path) -> None:
    """Create a new database file for its owner only: SQLite would create it (and its -wal and
    -shm files, which take the database's mode) as the umask allows, often readable by all,
    and the rows name users and objects. An existing file keeps its mode."""
    # There already (FileExistsError), or SQLite says what is wrong with the path.
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_engine(url: URL, *, read_only: bool) -> Engine:
    memory = is_memory(url)
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if memory:
        kwargs["poolclass"] = StaticPool  # one shared connection: one in-memory database
    elif read_only:
        # A connection of its own per transaction: one that had to be opened immutable (below)
        # is never kept to read a file that a writer has opened since.
        kwargs.update(creator=read_only_connector(sqlite_path(url)), poolclass=NullPool)
    else:
        _check_folder(sqlite_path(url), url)
        _create_private(sqlite_path(url))
    engine = create_engine(url, **kwargs)
    writes = not (memory or read_only)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module (SQLAlchemy's documented recipe) so
        # that BEGIN is ours and can be IMMEDIATE for writers.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if writes:  # a reader never changes the file: not its journal mode either
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


def read_only_connector(path: Path) -> Callable[[], sqlite3.Connection]:
    """Connections that read `path` (SQLite `mode=ro`). A WAL database whose -shm file is gone
    cannot be read so from a folder this process cannot write (a read-only mount; the last
    writer to close removed it): then, when no -wal file holds unmerged commits, every commit
    is in the file itself, and it is opened `immutable` instead."""
    uri = path.absolute().as_uri() + "?mode=ro"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            conn.close()
            if getattr(exc, "sqlite_errorname", "") != "SQLITE_CANTOPEN" or _has_wal(path):
                raise
            return sqlite3.connect(uri + "&immutable=1", uri=True, check_same_thread=False)
        return conn

    return connect


def _has_wal(path: Path) -> bool:
    """Whether a -wal file beside `path` holds anything (commits not yet in the file)."""
    try:
        return Path(f"{path}-wal").stat().st_size > 0
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: not immutable
