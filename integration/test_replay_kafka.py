"""`moderator replay` with exactly_once on a real Apache Kafka broker: a replay killed with
SIGKILL mid-run and resumed leaves each event's replayed verdict on the replay topic exactly once
(read_committed), and the report counts each event once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from moderator.dev.kafka.cluster import ApacheKafka
from moderator.dev.stack import EmbeddedStack
from replay_support import BUCKET, first_record, moderate, read_topic

N = 200


@pytest.fixture(scope="module")
def s3() -> Iterator[EmbeddedStack]:
    with EmbeddedStack(buckets=(BUCKET,)) as started, pytest.MonkeyPatch.context() as env:
        for name, value in started.env().items():
            if name.startswith("AWS_"):
                env.setenv(name, value)
        yield started


@pytest.mark.slow
def test_killed_and_resumed_replay_is_exactly_once(
    apache_kafka: ApacheKafka, s3: EmbeddedStack, tmp_path: Path
) -> None:
    bootstrap = apache_kafka.bootstrap_servers
    moderated = moderate(s3, tmp_path, N, bootstrap=bootstrap, delivery="exactly_once")
    report_dir = tmp_path / "report"
    base = [sys.executable, "-m", "moderator.cli.main", "replay", "--config", str(moderated.config)]
    first = subprocess.Popen(
        [*base, "--rate", "25", "--report", str(report_dir)],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Killed once its first checkpoint is committed: mid-run whatever the machine's load
        # (at 25 events/s the run takes 8 s at least).
        assert first_record(bootstrap, moderated.topics["replay"], 90), "nothing was committed"
        assert first.poll() is None, "the first process ended before it could be killed"
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(30)
    run_id = json.loads((report_dir / "run.json").read_text())["run_id"]
    before = [v for v in read_topic(bootstrap, moderated.topics["replay"], 1, 20)]
    assert 0 < len(before) < N, "the kill came mid-run"

    resumed = subprocess.run(
        [*base, "--resume", run_id, "--report", str(report_dir)],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    replayed = [
        v
        for v in read_topic(bootstrap, moderated.topics["replay"], N, 60)
        if v["replay"]["run_id"] == run_id
    ]
    counts = Counter(v["event_id"] for v in replayed)
    assert set(counts) == set(moderated.verdicts)
    assert max(counts.values()) == 1, "a replayed verdict was committed twice"
    report = json.loads((report_dir / "report.json").read_text())
    assert report["events"] == N
    assert sum(report["transitions"].values()) == N
