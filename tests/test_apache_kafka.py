"""ApacheKafka without a JVM: argument checks, use before start(), a missing Java."""

from __future__ import annotations

from pathlib import Path

import pytest

from moderator.dev.errors import DevStackError
from moderator.dev.kafka.cluster import ApacheKafka, main
from moderator.errors import ConfigError


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="brokers must be at least 1"):
        ApacheKafka(0)
    with pytest.raises(ValueError, match="heap_mb"):
        ApacheKafka(heap_mb=64)


def test_use_before_start_is_a_clear_error() -> None:
    kafka = ApacheKafka()
    with pytest.raises(DevStackError, match="not started"):
        _ = kafka.bootstrap_servers
    with pytest.raises(DevStackError, match="not started"):
        kafka.stop_broker(0)
    kafka.stop()
    kafka.stop()  # harmless, twice


def test_start_without_java_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    kafka = ApacheKafka()
    with pytest.raises(ConfigError, match="java: not found on PATH"):
        kafka.start()
    with pytest.raises(DevStackError, match="not started"):
        _ = kafka.bootstrap_servers


def test_resolve_command_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["--resolve"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: java: not found on PATH")
    assert captured.err.count("\n") == 1
