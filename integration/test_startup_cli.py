"""Start-up failures as a new user meets them: `moderator run` with no broker is one line and
exit 2 within kafka.startup_timeout_s; `moderator run --check` on the embedded stack passes,
and names the closed Kafka port or the missing bucket when there is one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from moderator.dev.stack import EmbeddedStack
from moderator.policy.bundled import write_default_policy

CLI = [sys.executable, "-m", "moderator.cli.main"]
ROLES = ("uploads", "verdicts", "audit", "dlq")


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_run_without_a_broker_is_one_line_and_exit_2(tmp_path: Path) -> None:
    servers = f"127.0.0.1:{_closed_port()}"
    env = {
        **os.environ,
        "MODERATOR_KAFKA__BOOTSTRAP_SERVERS": servers,
        "MODERATOR_KAFKA__STARTUP_TIMEOUT_S": "3",
        "MODERATOR_LOG__FORMAT": "json",
    }

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "run", "--engine", "fake"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    first = run()  # without its policy directory, it stops before contacting the broker
    assert (first.returncode, first.stdout) == (2, "")
    assert first.stderr == "moderator: policies.dir: policies is not a directory\n"
    write_default_policy(tmp_path / "policies")
    started = time.monotonic()
    done = run()
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("moderator: kafka: cannot reach the cluster within 3 s")
    assert servers in line and "Connection refused" in line
    assert "kafka.bootstrap_servers" in line and "MODERATOR_KAFKA__BOOTSTRAP_SERVERS" in line
    assert "%3|" not in done.stderr and "Traceback" not in done.stderr
    assert elapsed < 10


@pytest.fixture
def check_env(stack: EmbeddedStack, unique: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a `run --check` against the stack, with the service's topics made
    (the mock cluster creates a topic on its first record) and the bundled policies."""
    topics = {role: f"{role}-{unique}" for role in ROLES}
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    for topic in topics.values():
        producer.produce(topic, b"x")
    assert producer.flush(10) == 0
    policies = tmp_path / "policies"
    write_default_policy(policies)
    return {
        **os.environ,
        **stack.env(),
        **{f"MODERATOR_KAFKA__TOPICS__{role.upper()}": name for role, name in topics.items()},
        "MODERATOR_KAFKA__STARTUP_TIMEOUT_S": "5",
        "MODERATOR_TENANCY__UPLOAD_BUCKETS": json.dumps(list(stack.buckets)),
        "MODERATOR_POLICIES__DIR": str(policies),
        "MODERATOR_ENGINE__KIND": "fake",
    }


def _check(env: dict[str, str]) -> tuple[int, dict[str, tuple[str, str]], str]:
    done = subprocess.run(
        [*CLI, "run", "--check"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["check", "status", "detail"]
    table = {}
    for row in rows:
        name, status, detail = row.split(maxsplit=2)
        table[name] = (status, detail)
    assert list(table) == ["config", "kafka", "s3", "engine", "policies"]
    return done.returncode, table, done.stderr


def test_check_passes_on_the_embedded_stack(check_env: dict[str, str]) -> None:
    code, table, stderr = _check(check_env)
    assert code == 0, (table, stderr)
    assert {status for status, _ in table.values()} == {"ok"}
    assert "moderator:" not in stderr
    assert "uploads-" in table["kafka"][1]
    assert "uploads" in table["s3"][1]
    assert "Traceback" not in stderr


def test_check_fails_on_a_closed_kafka_port(check_env: dict[str, str]) -> None:
    servers = f"127.0.0.1:{_closed_port()}"
    env = {
        **check_env,
        "MODERATOR_KAFKA__BOOTSTRAP_SERVERS": servers,
        "MODERATOR_KAFKA__STARTUP_TIMEOUT_S": "2",
    }
    started = time.monotonic()
    code, table, stderr = _check(env)
    assert code == 2
    assert time.monotonic() - started < 15
    status, detail = table["kafka"]
    assert status == "FAIL" and servers in detail and "kafka.bootstrap_servers" in detail
    assert all(table[name][0] == "ok" for name in ("config", "s3", "engine", "policies"))
    assert "%3|" not in stderr and "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("moderator:")]
    assert lines == ["moderator: run --check: 1 of 5 checks failed: kafka"]


def test_check_fails_on_a_missing_bucket_and_a_missing_topic(
    check_env: dict[str, str], unique: str
) -> None:
    env = {
        **check_env,
        "MODERATOR_TENANCY__UPLOAD_BUCKETS": json.dumps(["uploads", f"missing-{unique}"]),
        "MODERATOR_KAFKA__TOPICS__DLQ": f"nowhere-{unique}",
    }
    code, table, stderr = _check(env)
    assert code == 2
    assert table["s3"][0] == "FAIL"
    assert f"bucket missing-{unique}: does not exist (tenancy.upload_buckets)" in table["s3"][1]
    assert table["kafka"][0] == "FAIL" and f"nowhere-{unique}" in table["kafka"][1]
    assert table["engine"][0] == "ok" and table["policies"][0] == "ok"
    assert "Traceback" not in stderr


def test_check_reports_bad_settings_and_skips_the_rest(check_env: dict[str, str]) -> None:
    code, table, _ = _check({**check_env, "MODERATOR_KAFKA__DELIVERY": "sometimes"})
    assert code == 2
    assert table["config"][0] == "FAIL" and "kafka.delivery" in table["config"][1]
    assert {table[name][0] for name in ("kafka", "s3", "engine", "policies")} == {"skipped"}
