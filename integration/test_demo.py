"""`moderator demo` as a user runs it: no warning on a normal run but the malformed message's,
its spans with `telemetry.traces=console`, and an engine that cannot load reported in one line
before any verdict is awaited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def _demo(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODERATOR_")}
    clean["MODERATOR_HTTP__PORT"] = "0"  # no endpoint: tests run side by side
    return subprocess.run(
        [sys.executable, "-m", "moderator.cli.main", "demo", *args],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=240,
    )


def _spans(stderr: str) -> list[dict[str, Any]]:
    """The console exporter's JSON documents among the log lines on stderr."""
    decoder, spans, at = json.JSONDecoder(), [], 0
    while (start := stderr.find("{\n", at)) >= 0:
        doc, at = decoder.raw_decode(stderr, start)
        if isinstance(doc, dict) and "context" in doc:
            spans.append(doc)
    return spans


def _log_lines(stderr: str) -> list[dict[str, Any]]:
    """The structured log lines (JSON objects with a level) among stderr's lines."""
    found = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if isinstance(doc, dict) and "level" in doc:
                found.append(doc)
    return found


def test_a_normal_run_warns_only_about_the_malformed_message(tmp_path: Path) -> None:
    # The README's run (default --events): the service subscribes before the first upload is
    # produced. The topics exist by then, so librdkafka's consumer does not log `Subscribed
    # topic not available: uploads` (a `consumer_error` warning).
    done = _demo(tmp_path, "--engine", "fake")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "25/25 verdicts" in done.stdout
    assert "consumer_error" not in done.stderr
    assert "not available" not in done.stderr
    warned = [d for d in _log_lines(done.stderr) if d["level"] != "info"]
    assert [d["event"] for d in warned] == ["dead_lettered"], done.stderr


def test_the_demo_traces_each_event_and_engine_call(tmp_path: Path) -> None:
    done = _demo(
        tmp_path, "--engine", "fake", "--events", "4", MODERATOR_TELEMETRY__TRACES="console"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    spans = _spans(done.stderr)
    events = {s["context"]["span_id"] for s in spans if s["name"] == "moderator.process"}
    # 4 uploads and the re-upload the demo sends after them (a cache hit): 5 events.
    assert len(events) == 5
    batches = [s for s in spans if s["name"] == "moderator.engine.batch"]
    linked = {link["context"]["span_id"] for b in batches for link in b["links"]}
    assert linked and linked <= events
    assert any(s["name"] == "moderator.publish" for s in spans)
    assert "5/5 verdicts" in done.stdout


def test_an_engine_that_cannot_load_is_one_line(tmp_path: Path) -> None:
    done = _demo(tmp_path, "--engine", "transformers", "--model", str(tmp_path / "none"))
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("moderator:")]
    assert lines == [
        f"moderator: engine.model: no checkpoint directory at {tmp_path / 'none'}"
        " (weights are never downloaded: put the checkpoint there)"
    ]
    assert "Traceback" not in done.stderr


def test_a_client_property_librdkafka_refuses_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("kafka:\n  client:\n    no.such.property: 1\n")
    done = _demo(tmp_path, "--engine", "fake", "--events", "1", "--config", "bad.yaml")
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("moderator:")]
    assert lines == [
        "moderator: pipeline failed: kafka: librdkafka refused the client configuration: "
        'No such configuration property: "no.such.property" '
        "(check the kafka.* settings and kafka.client)"
    ]
