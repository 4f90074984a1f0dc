"""No secret reaches any output: with a SASL password, an SSL key password, an AWS secret key,
bearer tokens (the audit API's and the OpenAI engine's) and the DSA PUID salt set, the usual
commands and their failures print none of them on stdout, stderr or in their log lines.

Commands run in this process (output read at the file descriptors, so librdkafka's own writes
count too) and, where cheap, as real processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from moderator.audit.db.store import AuditStore
from moderator.cli.main import main
from moderator.logs import configure_logging
from moderator.policy.bundled import write_default_policy
from moderator.settings import LogSettings
from tests.harness import png
from tests.policy_fixtures import clear_moderator_env

SASL_PASSWORD = "sasl-pw-Q7v2K9xTr4"
SSL_KEY_PASSWORD = "ssl-key-pw-B8n3Jd5w"
AWS_SECRET = "aws-sk-Zp4mR8wN1yHc6Tq"
AUDIT_TOKEN = "tok-audit-H3jL6sV0aPe"
OPENAI_KEY = "sk-openai-F5tY2bQ9uGx"
DSA_SALT = "salt-dsa-W9cE4rU7kM2p"
SECRETS = (SASL_PASSWORD, SSL_KEY_PASSWORD, AWS_SECRET, AUDIT_TOKEN, OPENAI_KEY, DSA_SALT)
CLOSED_PORT = "127.0.0.1:1"  # nothing listens on port 1: connections are refused at once


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Every secret set the way an operator sets it; an empty audit store; policies; logs at
    debug level as JSON (the most a command ever writes)."""
    clear_moderator_env(monkeypatch)
    policies = tmp_path / "policies"
    write_default_policy(policies)
    store = tmp_path / "audit.db"
    AuditStore.open(f"sqlite:///{store}").close()
    token_hash = hashlib.sha256(AUDIT_TOKEN.encode()).hexdigest()
    values = {
        "MODERATOR_KAFKA__BOOTSTRAP_SERVERS": CLOSED_PORT,
        "MODERATOR_KAFKA__STARTUP_TIMEOUT_S": "1",
        "MODERATOR_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "MODERATOR_KAFKA__SASL_MECHANISM": "PLAIN",
        "MODERATOR_KAFKA__SASL_USERNAME": "moderator",
        "MODERATOR_KAFKA__SASL_PASSWORD": SASL_PASSWORD,
        "MODERATOR_KAFKA__SSL_KEY_PASSWORD": SSL_KEY_PASSWORD,
        "MODERATOR_ENGINE__OPENAI__API_KEY": OPENAI_KEY,
        "MODERATOR_AUDIT__URL": f"sqlite:///{store}",
        "MODERATOR_AUDIT__API_TOKENS": json.dumps({token_hash: ["*"]}),
        "MODERATOR_POLICIES__DIR": str(policies),
        "MODERATOR_HTTP__PORT": "0",
        "MODERATOR_LOG__LEVEL": "debug",
        "MODERATOR_LOG__FORMAT": "json",
        "MODERATOR_DSA_PUID_SALT": DSA_SALT,
        "AWS_ACCESS_KEY_ID": "AKIATESTTESTTEST",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    yield values
    configure_logging(LogSettings(level="warning", format="json"))  # as tests/conftest.py has it


def assert_no_secret(text: str, what: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{what} shows a secret ({secret[:8]}...):\n{text}"


def run_here(capfd: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    """main(argv) in this process: (exit code, stdout + stderr)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capfd.readouterr()
    assert_no_secret(out + err, " ".join(argv))
    return code, out + err


def run_process(argv: list[str], extra: dict[str, str] | None = None) -> tuple[int, str]:
    """`python -m moderator.cli.main argv` as a real process: (exit code, stdout + stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "moderator.cli.main", *argv],
        env={**os.environ, **(extra or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    text = done.stdout + done.stderr
    assert_no_secret(text, " ".join(argv))
    return done.returncode, text


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for n in range(2):
        (images / f"{n}.png").write_bytes(png(n))
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    return images


# -- settings errors ---------------------------------------------------------------------------


RAW_TOKEN_KEY = json.dumps({AUDIT_TOKEN: ["*"]})


@pytest.mark.parametrize(
    ("variable", "value", "debug"),
    [
        ("MODERATOR_KAFKA__SASL_MECHANISM", "BOGUS", False),  # another setting is wrong
        ("MODERATOR_KAFKA__SASL_MECHANISM", "BOGUS", True),
        ("MODERATOR_AUDIT__API_TOKENS", RAW_TOKEN_KEY, False),  # a raw token, not its hash
        # --debug adds the chained pydantic error: it must not quote the refused value.
        ("MODERATOR_AUDIT__API_TOKENS", RAW_TOKEN_KEY, True),
        ("MODERATOR_S3__ENDPOINT_URL", f"http://key:{AWS_SECRET}@minio:9000", False),
        ("MODERATOR_S3__ENDPOINT_URL", f"http://key:{AWS_SECRET}@minio:9000", True),
    ],
)
def test_settings_errors_name_no_secret(
    env: dict[str, str],
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    debug: bool,
) -> None:
    monkeypatch.setenv(variable, value)
    code, text = run_here(capfd, [*(["--debug"] if debug else []), "run", "--engine", "fake"])
    assert code == 2 and "configuration error" in text


@pytest.mark.parametrize("debug", [False, True])
def test_a_secret_in_a_config_file_beside_an_error_is_not_shown(
    env: dict[str, str],
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    debug: bool,
) -> None:
    """A valid secret beside a bad value, and a secret given where a string belongs."""
    for name in ("MODERATOR_KAFKA__SASL_PASSWORD", "MODERATOR_ENGINE__OPENAI__API_KEY"):
        monkeypatch.delenv(name)  # the environment would win over the file
    config = tmp_path / "moderator.yaml"
    config.write_text(
        f"kafka:\n  sasl_password: {SASL_PASSWORD}\n  commit_interval_ms: -5\n"
        f"engine:\n  openai:\n    api_key: [{OPENAI_KEY}]\n"
    )
    code, text = run_here(capfd, [*(["--debug"] if debug else []), "run", "--config", str(config)])
    assert code == 2 and "configuration error" in text


def test_a_settings_error_in_a_real_process_names_no_secret(env: dict[str, str]) -> None:
    code, text = run_process(
        ["run", "--engine", "fake"], {"MODERATOR_AUDIT__API_TOKENS": json.dumps({AUDIT_TOKEN: []})}
    )
    assert code == 2 and "api_tokens" in text


# -- commands ----------------------------------------------------------------------------------


def test_policy_validate(env: dict[str, str], capfd: pytest.CaptureFixture[str]) -> None:
    code, _ = run_here(capfd, ["policy", "validate", env["MODERATOR_POLICIES__DIR"]])
    assert code == 0


@pytest.mark.parametrize("debug", [False, True])
def test_scan_of_a_folder_with_the_fake_engine(
    env: dict[str, str], capfd: pytest.CaptureFixture[str], folder: Path, debug: bool
) -> None:
    code, text = run_here(capfd, [*(["--debug"] if debug else []), "scan", str(folder)])
    assert code == 0 and text.count('"event_id"') >= 3


def test_audit_query_and_dsa_export_on_an_empty_store(
    env: dict[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["audit", "query", "--format", "json"],
        ["audit", "query", "--all"],
        ["audit", "export-dsa"],
    ):
        code, _ = run_here(capfd, argv)
        assert code == 0, argv


def test_audit_query_on_a_missing_store(
    env: dict[str, str],
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{tmp_path / 'nowhere.db'}")
    code, text = run_here(capfd, ["--debug", "audit", "query"])
    assert code == 1 and "Traceback" in text


def test_run_against_a_closed_port(env: dict[str, str], capfd: pytest.CaptureFixture[str]) -> None:
    code, _ = run_here(capfd, ["--debug", "run", "--engine", "fake"])
    assert code != 0


def test_run_and_scan_in_real_processes(env: dict[str, str], folder: Path) -> None:
    code, text = run_process(["run", "--engine", "fake"])
    assert code != 0 and text.strip()
    code, text = run_process(["--debug", "scan", str(folder)])
    assert code == 0 and text.count('"event_id"') >= 3
