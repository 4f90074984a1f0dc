"""Secrets in `audit.url` never reach people: a password given as a query parameter, one the
driver echoes in its error, and one with a raw "@" (refused: the driver would split the URL
elsewhere and print the rest of the password as the host)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from unittest import mock

import pytest

from moderator.audit.db.connect import hide_secrets, normalize_url
from moderator.errors import ConfigError
from moderator.settings import ENV_PREFIX
from tests.test_cli_errors import environment, run_main

# Port 1 on the loopback refuses at once: every command fails at its first connection.
QUERY_URLS = [
    "postgresql://alice@127.0.0.1:1/db?password=QSecretPW2",
    "postgresql:///db?host=127.0.0.1&port=1&user=a&password=QSecretPW13",
    "postgresql://alice@127.0.0.1:1/db?password=QSecret%40PW5&sslpassword=QSecretSsl6",
]
SECRETS = ("QSecret", "PW2", "PW13", "PW4", "PW5", "Ssl6")


def audit_query(url: str) -> subprocess.CompletedProcess[str]:
    """`moderator audit query --tenant a` as a user runs it, `audit.url` from the environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return subprocess.run(
        [sys.executable, "-m", "moderator.cli.main", "audit", "query", "--tenant", "a"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, f"{ENV_PREFIX}AUDIT__URL": url},
    )


def assert_no_secret(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, text


@pytest.mark.parametrize("url", QUERY_URLS)
def test_a_password_in_the_query_is_masked_by_audit_query(url: str) -> None:
    done = audit_query(url)
    assert done.returncode == 1, done.stderr
    assert_no_secret(done.stdout + done.stderr)
    assert "password=***" in done.stderr and "connection failed" in done.stderr


def test_a_raw_at_in_the_password_is_refused_without_showing_it() -> None:
    done = audit_query("postgresql://alice:XSecret@PW4@127.0.0.1:1/db")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "moderator: configuration error: audit.url: write an @ in the user name or password as "
        "%40 (from environment MODERATOR_AUDIT__URL)\n"
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://alice:XSecret@PW4@127.0.0.1:1/db",
        "postgresql://alice:XSecret@PW4@db/audit",
        "postgresql://alice@127.0.0.1:1/db?password=QSecret@PW4",
    ],
)
def test_normalize_url_refuses_a_raw_at_before_the_host(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        normalize_url(url)
    assert str(caught.value) == "audit.url: write an @ in the user name or password as %40"


def test_an_encoded_at_is_the_password_and_stays_masked() -> None:
    parsed = normalize_url("postgresql://alice:XSecret%40PW4@127.0.0.1:1/db")
    assert (parsed.username, parsed.password, parsed.host) == ("alice", "XSecret@PW4", "127.0.0.1")
    done = audit_query("postgresql://alice:XSecret%40PW4@127.0.0.1:1/db")
    assert done.returncode == 1, done.stderr
    assert "postgresql+psycopg://alice:***@127.0.0.1:1/db: connection failed" in done.stderr
    assert "XSecret" not in done.stderr and "PW4" not in done.stderr


def test_an_at_in_the_query_without_a_port_is_kept() -> None:
    parsed = normalize_url(
        "postgresql://alice@db/audit?password=QSecret%40PW4&application_name=a@b"
    )
    assert parsed.query == {"password": "QSecret@PW4", "application_name": "a@b"}


def test_driver_errors_echoing_a_known_secret_are_masked() -> None:
    parsed = normalize_url(QUERY_URLS[2])
    text = 'bad value "QSecret@PW5" for sslpassword QSecretSsl6; server "127.0.0.1"'
    assert hide_secrets(parsed, text) == 'bad value "***" for sslpassword ***; server "127.0.0.1"'
    plain = normalize_url("postgresql://alice:XSecret%40PW4@db/audit")
    assert hide_secrets(plain, "password XSecret@PW4 refused") == "password *** refused"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://alice:QSecret PW4@127.0.0.1:99999/db",
        "postgresql://alice:QSecret'PW4@127.0.0.1:x/db",
        "alice:QSecret PW4@db/audit",
    ],
)
def test_a_url_that_does_not_parse_is_shown_masked(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        normalize_url(url)
    assert_no_secret(str(caught.value))
    assert "alice:***@" in str(caught.value)


def test_run_with_audit_sink_masks_the_url_in_its_log_and_last_line() -> None:
    """`moderator run --with-audit-sink` with no broker: the sink fails at its first connection,
    logs `audit_sink_failed` (JSON on stderr) and the command ends with one line."""

    def serve(_settings: object, stop: threading.Event, **_kw: object) -> None:
        stop.wait(30)  # stands in for the consumer: returns once the sink's failure stops it

    env = {
        "MODERATOR_AUDIT__URL": QUERY_URLS[0] + "&connect_timeout=2",
        "MODERATOR_KAFKA__CREATE_TOPICS": "false",
        "MODERATOR_LOG__FORMAT": "json",
    }
    with (
        environment(env),
        mock.patch("moderator.ingest.startup.probe_cluster"),
        mock.patch("moderator.cli.preflight.check_settings"),
        mock.patch("moderator.cli.main.install_stop_handlers", threading.Event),
        mock.patch("moderator.service.run_service", serve),
    ):
        code, out, err = run_main(["run", "--with-audit-sink"])
    assert code == 1, err
    assert_no_secret(out + err)
    assert '"event": "audit_sink_failed"' in err and "password=***" in err
    assert err.splitlines()[-1].startswith("moderator: audit store postgresql+psycopg://alice@")
