"""One-line usage errors of `audit query` and `audit export-dsa`: the output file checked before
the store is read, filter flags given twice, a bad `audit.url` reported as a setting, and the
wording of time and scope errors."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import pytest

from moderator.audit.read.filters import FILTERS, BadFilter, build_query
from moderator.cli.audit_query import flag_name
from moderator.cli.main import main
from tests.audit_fixtures import make_db
from tests.policy_fixtures import clear_moderator_env

ROOT = Path(__file__).resolve().parent.parent
SALT = "cli-salt-0123456789abcdef"


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clear_moderator_env(monkeypatch)
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(ROOT / "policies" / "default.yaml", policies / "default.yaml")
    monkeypatch.setenv("MODERATOR_POLICIES__DIR", str(policies))
    monkeypatch.setenv("MODERATOR_POLICIES__DEFAULT_FOR_UNKNOWN", "true")
    monkeypatch.setenv("MODERATOR_DSA_PUID_SALT", SALT)
    path = tmp_path / "audit.db"
    monkeypatch.setenv("MODERATOR_AUDIT__URL", make_db(path))
    return path


@pytest.fixture
def unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings whose audit store does not exist: reading it would fail with exit 1, so an
    exit 2 shows that a flag was refused before the store was read."""
    clear_moderator_env(monkeypatch)
    monkeypatch.setenv("MODERATOR_DSA_PUID_SALT", SALT)
    missing = tmp_path / "absent" / "audit.db"
    monkeypatch.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{missing}")
    return missing


def run(*argv: str) -> tuple[int, str, str]:
    """main(argv) in this process: (exit code, stdout, stderr); argparse exits included."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def one_line(argv: tuple[str, ...], code: int = 2) -> str:
    got, out, err = run(*argv)
    assert (got, out) == (code, ""), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


# -- export-dsa --output -------------------------------------------------------------------------


def test_an_output_in_a_missing_folder_is_refused_before_the_store_is_read(
    unread: Path, tmp_path: Path
) -> None:
    target = tmp_path / "nonexistent" / "x.jsonl"
    line = one_line(("audit", "export-dsa", "--output", str(target)))
    assert line == (f"moderator: --output: cannot create {target}: {target.parent} does not exist")
    assert not target.parent.exists()  # a mistyped folder is not created
    assert not unread.exists() and not unread.parent.exists()


def test_an_output_that_is_a_folder_is_refused(unread: Path, tmp_path: Path) -> None:
    line = one_line(("audit", "export-dsa", "--output", str(tmp_path)))
    assert line == f"moderator: --output: {tmp_path} is a directory"


def test_an_output_under_a_file_is_refused(unread: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("not a folder\n")
    target = plain / "x.jsonl"
    line = one_line(("audit", "export-dsa", "--output", str(target)))
    assert line == f"moderator: --output: cannot create {target}: {plain} is not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any folder")
def test_an_output_in_a_read_only_folder_is_refused(unread: Path, tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        target = folder / "x.jsonl"
        line = one_line(("audit", "export-dsa", "--output", str(target)))
    finally:
        folder.chmod(0o700)
    assert line == f"moderator: --output: cannot create {target}: {folder} is not writable"


def test_an_output_in_a_folder_without_write_access_is_refused(
    unread: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the test above, where root (who may write anywhere) runs the tests."""
    monkeypatch.setattr("moderator.cli.audit_dsa.os.access", lambda *_: False)
    target = tmp_path / "x.jsonl"
    line = one_line(("audit", "export-dsa", "--output", str(target)))
    assert line == f"moderator: --output: cannot create {target}: {tmp_path} is not writable"


def test_an_output_in_an_existing_folder_is_written(db: Path, tmp_path: Path) -> None:
    target = tmp_path / "sor.jsonl"
    code, out, err = run("audit", "export-dsa", "--output", str(target))
    assert (code, out) == (0, ""), err
    assert target.is_file()


# -- filter flags given twice ---------------------------------------------------------------------


def test_a_tenant_given_twice_is_refused(db: Path) -> None:
    line = one_line(("audit", "query", "--tenant", "kids", "--tenant", "news"))
    assert line.startswith(
        "moderator audit query: error: --tenant: given twice ('kids', 'news'); audit query "
        "takes one --tenant"
    )


@pytest.mark.parametrize("name", [f.name for f in FILTERS])
def test_every_query_filter_given_twice_is_refused(db: Path, name: str) -> None:
    flag = flag_name(name)
    line = one_line(("audit", "query", flag, "a", flag, "b"))
    assert f"error: {flag}: given twice ('a', 'b'); audit query takes one {flag}" in line


@pytest.mark.parametrize("flag", ["--tenant", "--since", "--until"])
def test_export_dsa_filters_given_twice_are_refused(unread: Path, flag: str) -> None:
    line = one_line(("audit", "export-dsa", flag, "2026-01-01", flag, "2026-02-01"))
    assert f"{flag}: given twice ('2026-01-01', '2026-02-01'); audit export-dsa takes one" in line


def test_a_filter_given_once_still_filters(db: Path) -> None:
    code, out, err = run("audit", "query", "--tenant", "beta", "--format", "json")
    assert code == 0, err
    assert out.count("\n") == 4 and '"tenant_id":"beta"' in out


# -- audit.url is a setting like any other -----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://x", "unsupported database 'mysql' (use sqlite:///path or postgresql://...)"),
        ("foo", "not a database URL: 'foo' (use sqlite:///path or postgresql://...)"),
        ("postgresql://u:secret@h:99999/db", "port 99999 out of range in "),
    ],
)
@pytest.mark.parametrize("command", [("audit", "query"), ("audit", "export-dsa")])
def test_a_bad_audit_url_is_a_configuration_error_naming_its_variable(
    db: Path,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    problem: str,
    command: tuple[str, ...],
) -> None:
    monkeypatch.setenv("MODERATOR_AUDIT__URL", url)
    line = one_line(command)
    assert line.startswith(f"moderator: configuration error: audit.url: {problem}")
    assert line.endswith(" (from environment MODERATOR_AUDIT__URL)")
    assert "secret" not in line


def test_a_bad_audit_url_in_a_file_names_the_file(
    db: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MODERATOR_AUDIT__URL")
    config = tmp_path / "settings.yaml"
    config.write_text('audit:\n  url: "mysql://u:secret@host/db"\n')
    line = one_line(("audit", "query", "--config", str(config)))
    assert line == (
        "moderator: configuration error: audit.url: unsupported database 'mysql' "
        f"(use sqlite:///path or postgresql://...) (in {config})"
    )


# -- wording ------------------------------------------------------------------------------------


def test_until_before_since_names_both_flags(db: Path) -> None:
    line = one_line(("audit", "query", "--since", "2026-02-01", "--until", "2026-01-01"))
    assert line == "moderator: --until: must be later than --since"


def test_the_api_names_both_parameters_without_dashes() -> None:
    with pytest.raises(BadFilter) as caught:
        build_query({"since": "2026-02-01", "until": "2026-01-01"})
    assert str(caught.value) == "until: must be later than since"
    assert caught.value.reason_naming(flag_name) == "must be later than --since"


def test_a_bad_time_says_iso_8601_once(db: Path) -> None:
    line = one_line(("audit", "query", "--since", "yesterday"))
    assert line.startswith("moderator: --since: not an ISO 8601 time: 'yesterday' (e.g. ")
    assert line.count("ISO 8601") == 1


# -- a SQLite store the process cannot create ---------------------------------------------------


def test_a_sqlite_store_under_a_file_names_its_folder(tmp_path: Path) -> None:
    from moderator.audit.db.store import AuditStore
    from moderator.errors import ConfigError

    plain = tmp_path / "plain.txt"
    plain.write_text("not a folder\n")
    with pytest.raises(ConfigError, match=rf"^audit.url: .*: the folder {plain} is not a folder"):
        AuditStore.open(f"sqlite:///{plain}/audit.db")


def test_a_sqlite_store_in_a_folder_without_write_access_names_the_folder_and_uid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a container whose volume is not writable by its uid shows, where root (who may
    write anywhere) runs the tests."""
    from moderator.audit.db.store import AuditStore
    from moderator.audit.errors import AuditUnavailable

    monkeypatch.setattr("moderator.audit.db.connect.os.access", lambda *_: False)
    expected = rf"cannot create it: its folder {tmp_path} is not writable \(by uid {os.getuid()}\)"
    with pytest.raises(AuditUnavailable, match=expected):
        AuditStore.open(f"sqlite:///{tmp_path}/audit.db")
    assert not (tmp_path / "audit.db").exists()
