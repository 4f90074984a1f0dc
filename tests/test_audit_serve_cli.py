"""`moderator audit serve` (help, refused token hashes) and `moderator audit hash-token`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from moderator.audit.read.tokens import KNOWN_MISTAKES, mistaken_hash
from moderator.cli.main import main
from moderator.logs import StderrHandler
from tests.policy_fixtures import clear_moderator_env

TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0-a token with $pecial %s chars"
BIN = str(Path(sys.executable).parent)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def help_text(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("command", [("audit", "serve"), ("audit", "hash-token")])
def test_help_teaches_commands_that_hash_the_real_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    """Each command line the help shows, run by a real shell, prints the token's own hash."""
    monkeypatch.setenv("COLUMNS", "200")  # no wrapping inside a command line
    text = help_text(capsys, *command)
    lines = re.findall(r"printf [^|\n]*\|\s*(?:sha256sum|moderator audit hash-token)", text)
    assert any("sha256sum" in line for line in lines), text
    assert any("hash-token" in line for line in lines), text
    env = {**os.environ, "TOKEN": TOKEN, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for line in lines:
        done = subprocess.run(
            ["bash", "-c", line], env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, (line, done.stderr)
        assert done.stdout.split()[0] == sha256(TOKEN), line


def serve_with(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tokens: dict[str, Any],
    port: int = 0,
) -> tuple[int, str, list[Any]]:
    """`audit serve` up to the point where uvicorn would serve: (exit code, stderr, [(the
    uvicorn config, the sockets it was given)])."""
    clear_moderator_env(monkeypatch)
    monkeypatch.setenv("MODERATOR_AUDIT__API_TOKENS", json.dumps(tokens))
    started: list[Any] = []
    uvicorn = pytest.importorskip("uvicorn")

    def run(server: Any, sockets: list[socket.socket] | None = None) -> None:
        started.append((server.config, sockets))
        for sock in sockets or []:
            sock.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    with tempfile.TemporaryDirectory(prefix="audit-serve-") as tmp:  # not the default file here
        monkeypatch.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{tmp}/audit.db")
        code = main(["audit", "serve", "--port", str(port or free_port())])
    return code, capsys.readouterr().err, started


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("mistake", ["", "%s", "%%s", "%s\n"])
def test_serve_refuses_hashes_of_known_mistakes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], mistake: str
) -> None:
    tokens = {sha256("a-real-token-of-enough-length-0123"): ["acme"], sha256(mistake): ["*"]}
    code, err, started = serve_with(monkeypatch, capsys, tokens)
    assert (code, started) == (2, [])
    assert len(err.splitlines()) == 1 and "audit.api_tokens" in err and "hash-token" in err


def test_serve_starts_with_real_token_hashes_and_logs_to_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err, started = serve_with(monkeypatch, capsys, {sha256(TOKEN): ["acme"]})
    assert code == 0, err
    ((config, sockets),) = started
    handlers = config.log_config["handlers"]
    assert {h["()"] for h in handlers.values()} == {StderrHandler}
    assert len(sockets) == 1  # bound before uvicorn starts, so a taken port is one line


def test_serve_on_a_port_in_use_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err, started = serve_with(monkeypatch, capsys, {sha256(TOKEN): ["acme"]}, port)
    assert (code, started) == (2, [])
    assert err == (
        f"moderator: --port: cannot listen on 127.0.0.1:{port}: the port is in use "
        "(choose a free --port)\n"
    )


def test_known_mistakes() -> None:
    assert mistaken_hash([sha256(TOKEN)]) is None
    assert mistaken_hash([sha256("%s").upper()]) is not None
    line = mistaken_hash([sha256("$TOKEN\n")])
    assert line is not None and 'the line "$TOKEN" (a variable that was not expanded)' in line
    assert mistaken_hash([sha256("TOKEN")]) is not None
    assert len(KNOWN_MISTAKES) == 12


def hash_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(["audit", "hash-token"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("stdin", [TOKEN, TOKEN + "\n", TOKEN + "\r\n"])
def test_hash_token_prints_the_hash(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str
) -> None:
    code, out, err = hash_token(monkeypatch, capsys, stdin)
    assert (code, out, err) == (0, sha256(TOKEN) + "\n", "")


def test_hash_token_warns_about_short_tokens(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = hash_token(monkeypatch, capsys, "short")
    assert (code, out) == (0, sha256("short") + "\n")
    assert err.startswith("moderator: warning: a token of 5 characters can be guessed")


@pytest.mark.parametrize(
    ("stdin", "reason"),
    [
        ("", "empty"),
        ("\n", "empty"),
        (" " + TOKEN, "white space"),
        (TOKEN + "\n\n", "white space"),
        ("line one\nline two", "control character"),
        (TOKEN + "é", "ASCII"),
        ("x" * 5000, "longer than 4096"),
    ],
)
def test_hash_token_refuses_what_no_header_can_carry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str, reason: str
) -> None:
    code, out, err = hash_token(monkeypatch, capsys, stdin)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and reason in err and TOKEN not in err


def test_hash_token_in_a_real_process_reads_bytes() -> None:
    command = [sys.executable, "-m", "moderator.cli.main", "audit", "hash-token"]
    done = subprocess.run(command, input=b"\xff\xfe\n", capture_output=True, check=False)
    assert done.returncode == 2 and done.stdout == b""
    assert done.stderr.decode().strip() == "moderator: stdin: the token is not UTF-8 text"
    done = subprocess.run(command, input=TOKEN.encode(), capture_output=True, check=False)
    assert (done.returncode, done.stdout.decode()) == (0, sha256(TOKEN) + "\n")
