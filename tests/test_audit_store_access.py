"""Where the audit store may live and how each command opens it: an in-memory audit.url is
refused, a writer makes no folders for a mistyped path, and the reading commands open SQLite
read-only, so that they change nothing in the file and work where it cannot be written."""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import text

from moderator.audit.db import connect
from moderator.audit.db.connect import check_writable, normalize_url
from moderator.audit.db.existing import open_existing
from moderator.audit.db.migrations import LATEST
from moderator.audit.db.store import AuditStore
from moderator.audit.errors import AuditUnavailable, SchemaVersionError
from moderator.cli.main import main
from moderator.errors import ConfigError
from tests.audit_fixtures import make_db
from tests.policy_fixtures import clear_moderator_env

IN_MEMORY = (
    "sqlite://",
    "sqlite:///:memory:",
    "sqlite:///file::memory:",
    "sqlite:///file::memory:?uri=true",
    "sqlite:///file::memory:?cache=shared&uri=true",
    "sqlite:///file:audit.db?mode=memory&uri=true",
    "sqlite:///audit.db?mode=memory",
)


def run(*argv: str) -> tuple[int, str, str]:
    """main(argv) in this process: (exit code, stdout, stderr); argparse exits included."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    clear_moderator_env(monkeypatch)
    monkeypatch.setenv("MODERATOR_HTTP__PORT", "0")
    return monkeypatch


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def journal_mode(path: Path) -> str:
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def rollback_copy(tmp_path: Path) -> Path:
    """A store in rollback-journal mode (as a copy made with the sqlite3 shell may be), file
    mode 0444."""
    path = tmp_path / "copy" / "audit.db"
    path.parent.mkdir()
    make_db(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
    conn.close()
    path.chmod(0o444)
    return path


# -- an in-memory audit.url ----------------------------------------------------------------------


@pytest.mark.parametrize("url", IN_MEMORY)
def test_every_spelling_of_an_in_memory_database_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^audit\.url: .* is an in-memory SQLite database"):
        normalize_url(url)
    with pytest.raises(ConfigError, match="in-memory"):
        AuditStore.open(url)
    with pytest.raises(ConfigError, match="in-memory"):
        open_existing(url)


def test_a_sqlite_uri_filename_is_refused() -> None:
    with pytest.raises(ConfigError, match="SQLite URI filenames"):
        normalize_url("sqlite:///file:audit.db?mode=ro&uri=true")


@pytest.mark.parametrize("command", [("audit", "query"), ("audit", "sink"), ("explain", "a-1")])
@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_commands_refuse_an_in_memory_audit_url_as_a_setting(
    env: pytest.MonkeyPatch, command: tuple[str, ...], url: str
) -> None:
    env.setenv("MODERATOR_AUDIT__URL", url)
    code, out, err = run(*command)
    assert (code, out) == (2, ""), err
    assert err.count("\n") == 1
    assert err.startswith("moderator: configuration error: audit.url: ")
    assert "in-memory" in err and "(from environment MODERATOR_AUDIT__URL)" in err


# -- a writer and a folder that does not exist ---------------------------------------------------


def test_a_writer_makes_no_folder_for_a_mistyped_path(tmp_path: Path) -> None:
    target = tmp_path / "nonexistent" / "dir" / "audit.db"
    expected = (
        rf"^audit\.url: sqlite:///{target}: the folder {target.parent} does not exist "
        r"\(create it, or correct the path\)$"
    )
    with pytest.raises(ConfigError, match=expected):
        AuditStore.open(f"sqlite:///{target}")
    assert not (tmp_path / "nonexistent").exists()


def test_a_writer_creates_a_missing_file_in_an_existing_folder(tmp_path: Path) -> None:
    with AuditStore.open(f"sqlite:///{tmp_path / 'new.db'}") as store:
        assert store.count() == 0
    assert (tmp_path / "new.db").is_file()


def test_the_audit_sink_stops_on_a_mistyped_folder_with_one_line(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    target = tmp_path / "nonexistent" / "dir" / "audit.db"
    env.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{target}")
    code, out, err = run("audit", "sink")
    assert (code, out) == (2, ""), err
    assert err == (
        f"moderator: audit.url: sqlite:///{target}: the folder {target.parent} does not exist "
        "(create it, or correct the path)\n"
    )
    assert not (tmp_path / "nonexistent").exists()


def test_the_demo_stores_nothing_in_a_mistyped_folder(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The demo refuses the path before it starts anything (its stack, the run), and its
    sink would refuse it too."""
    from moderator.cli.demo_audit import store_and_show
    from moderator.settings import load_settings

    target = tmp_path / "nonexistent" / "audit.db"
    env.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{target}")
    code, _, err = run("demo", "--engine", "fake", "--events", "1")
    assert code == 2 and "does not exist" in err, err
    assert "starting the embedded" not in err
    settings = load_settings(None, {"audit.url": f"sqlite:///{target}"})
    with pytest.raises(ConfigError, match="does not exist"):
        store_and_show(settings, ["e-1"], ["acme"], None)
    assert not target.parent.exists()
    check_writable(f"sqlite:///{tmp_path / 'a.db'}")
    assert not (tmp_path / "a.db").exists()  # checked, not created


# -- readers open the file read-only -------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("audit", "query", "--limit", "1"),
        ("audit", "query", "--format", "json", "--all"),
        ("audit", "verify"),
        ("audit", "retention", "--dry-run"),
        ("explain", "a-1"),
    ],
)
def test_reading_commands_leave_a_rollback_journal_file_as_it_was(
    env: pytest.MonkeyPatch, rollback_copy: Path, command: tuple[str, ...]
) -> None:
    before = digest(rollback_copy)
    env.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{rollback_copy}")
    env.setenv("MODERATOR_AUDIT__RETENTION_DAYS", '{"default": 1}')
    code, out, err = run(*command)
    assert code == 0, err
    assert out
    assert digest(rollback_copy) == before
    assert journal_mode(rollback_copy) == "delete"
    assert sorted(p.name for p in rollback_copy.parent.iterdir()) == ["audit.db"]


def test_a_store_opened_for_reading_cannot_write(rollback_copy: Path) -> None:
    """mode=ro: even root, whom file modes do not stop, cannot write through it."""
    with open_existing(f"sqlite:///{rollback_copy}") as store:
        assert store.count() == 10
        with pytest.raises(Exception, match="readonly database"), store._engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_records"))
        assert store.count() == 10


def test_retention_without_dry_run_still_writes(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = make_db(tmp_path / "audit.db")
    env.setenv("MODERATOR_AUDIT__URL", url)
    env.setenv("MODERATOR_AUDIT__RETENTION_DAYS", '{"default": 1}')
    code, out, err = run("audit", "retention")
    assert code == 0, err
    assert out.splitlines()[-1].split() == ["total", "10"]


def test_a_reader_does_not_migrate_an_older_database(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    make_db(path)
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM schema_migrations WHERE version = ?", (LATEST,))
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(SchemaVersionError, match=f"version {LATEST - 1}, older than"):
        open_existing(f"sqlite:///{path}")
    assert digest(path) == before


def test_a_reader_refuses_a_file_without_the_audit_tables(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(SchemaVersionError, match="holds no audit tables yet"):
        open_existing(f"sqlite:///{path}")
    assert path.stat().st_size == 0


def test_a_reader_needs_the_file(tmp_path: Path) -> None:
    with pytest.raises(AuditUnavailable, match="no such database file"):
        open_existing(f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()


@pytest.fixture
def no_shm(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What SQLite does on a read-only mount for a WAL file whose -shm is gone: a `mode=ro`
    connection opens, and its first read fails with SQLITE_CANTOPEN. Yields the URIs opened."""
    opened: list[str] = []
    real = sqlite3.connect

    class NoShm:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self._conn = conn

        def execute(self, *_args: Any) -> Any:
            exc = sqlite3.OperationalError("unable to open database file")
            exc.sqlite_errorname = "SQLITE_CANTOPEN"  # type: ignore[attr-defined]
            raise exc

        def close(self) -> None:
            self._conn.close()

    def fake(database: str, **kwargs: Any) -> Any:
        opened.append(database)
        conn = real(database, **kwargs)
        return conn if "immutable=1" in database else NoShm(conn)

    module = SimpleNamespace(connect=fake, OperationalError=sqlite3.OperationalError)
    monkeypatch.setattr(connect, "sqlite3", module)  # only the audit store's connections
    yield opened


def test_a_wal_file_whose_shm_cannot_be_made_is_read_as_immutable(
    tmp_path: Path, no_shm: list[str]
) -> None:
    path = tmp_path / "audit.db"
    make_db(path)  # closed: its commits are in the file, no -wal left
    with open_existing(f"sqlite:///{path}") as store:
        assert store.count() == 10
    assert no_shm[0].endswith("?mode=ro") and no_shm[1].endswith("?mode=ro&immutable=1")


def test_a_wal_file_with_unmerged_commits_is_never_read_as_immutable(
    tmp_path: Path, no_shm: list[str]
) -> None:
    path = tmp_path / "audit.db"
    make_db(path)
    Path(f"{path}-wal").write_bytes(b"\0" * 32)  # commits not yet in the file
    with pytest.raises(AuditUnavailable, match="unable to open database file"):
        open_existing(f"sqlite:///{path}")
    assert all("immutable" not in uri for uri in no_shm)


def test_the_audit_api_reads_a_file_it_cannot_write(
    env: pytest.MonkeyPatch, rollback_copy: Path
) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from moderator.audit.read.tokens import token_hash
    from moderator.cli.audit_serve import serve_app
    from moderator.settings import load_settings

    before = digest(rollback_copy)
    overrides = {
        "audit.url": f"sqlite:///{rollback_copy}",
        "audit.api_tokens": {token_hash("t" * 40): ["*"]},
    }
    app = serve_app(load_settings(None, overrides))
    with TestClient(app) as client:
        answer = client.get("/v1/verdicts", headers={"Authorization": f"Bearer {'t' * 40}"})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["items"]) == 10
    assert digest(rollback_copy) == before and journal_mode(rollback_copy) == "delete"


def test_a_copy_keeps_its_journal_mode_after_a_query(tmp_path: Path, rollback_copy: Path) -> None:
    """As an operator would check it: copy, query, compare."""
    copy = tmp_path / "again.db"
    shutil.copy(rollback_copy, copy)
    with open_existing(f"sqlite:///{copy}") as store:
        store.count()
    assert digest(copy) == digest(rollback_copy) and journal_mode(copy) == "delete"
