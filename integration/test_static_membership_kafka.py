"""`kafka.static_membership` on a real Kafka broker: `moderator run` (exactly_once) is SIGKILLed
mid-stream and started again under the same instance id. As a static member it takes its
partitions back at once and commits again well within the group's session timeout, where a
dynamic member waits for the killed member's session to expire first (docs/operations.md);
every event still gets exactly one verdict and one audit record."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from eos_kafka import KafkaWorld, S3Uploads, slow_run_env
from moderator.dev.stack import EmbeddedStack
from tests.eos_scenarios import Names, exactly_once_problems, finished, outcome, progress, seed

if TYPE_CHECKING:
    from moderator.dev.kafka.cluster import ApacheKafka

pytestmark = pytest.mark.slow

EVENTS = 400
SESSION_TIMEOUT_S = 20
REPO = Path(__file__).resolve().parent.parent


def restart_to_commit_s(
    kafka: ApacheKafka, stack: EmbeddedStack, tmp_path: Path, *, static: bool
) -> tuple[float, list[str]]:
    """Seconds from the restart after a SIGKILL to the restarted run's first commit, and how
    the outputs differ from exactly once ([] when they do not)."""
    world = KafkaWorld(kafka.bootstrap_servers)
    try:
        names = Names.unique("static" if static else "dynamic")
        world.create_topics(names.topics)
        uploads = S3Uploads(stack)
        ids, malformed = seed(world, uploads, names, EVENTS)
        uploads.wait()
        env = {
            **slow_run_env(
                kafka.bootstrap_servers,
                stack,
                names,
                tmp_path,
                instance_id="static-kill",
                session_timeout_ms=SESSION_TIMEOUT_S * 1000,
            ),
            "MODERATOR_KAFKA__STATIC_MEMBERSHIP": "true" if static else "false",
        }
        logs = tmp_path / f"run-{'static' if static else 'dynamic'}.log"
        command = [sys.executable, "-m", "moderator.cli.main", "run"]
        procs: list[subprocess.Popen[bytes]] = []

        def start() -> subprocess.Popen[bytes]:
            with logs.open("ab") as log:
                procs.append(subprocess.Popen(command, env=env, cwd=REPO, stderr=log))
            return procs[-1]

        def wait_for(condition: object, proc: subprocess.Popen[bytes], limit_s: float) -> None:
            deadline = time.monotonic() + limit_s
            while not condition():  # type: ignore[operator]
                assert proc.poll() is None, logs.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, logs.read_text(errors="replace")[-3000:]
                time.sleep(0.05)

        try:
            first = start()
            wait_for(lambda: progress(world, names) > 0, first, 60)
            time.sleep(0.5)
            first.kill()
            first.wait(10)
            at_kill = progress(world, names)
            assert at_kill < EVENTS, "the run finished before the kill"
            restarted_at = time.monotonic()
            second = start()
            wait_for(lambda: progress(world, names) > at_kill, second, 3 * SESSION_TIMEOUT_S)
            resumed_s = time.monotonic() - restarted_at
            wait_for(lambda: finished(world, names), second, 120)
            result = outcome(world, names)
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0, logs.read_text(errors="replace")[-3000:]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        return resumed_s, exactly_once_problems(result, ids, malformed)
    finally:
        world.close()


def test_a_static_member_restarted_after_sigkill_resumes_at_once(
    apache_kafka: ApacheKafka, stack: EmbeddedStack, tmp_path: Path
) -> None:
    resumed_s, problems = restart_to_commit_s(apache_kafka, stack, tmp_path, static=True)
    print(f"\nstatic member: first commit {resumed_s:.1f} s after the restart")
    assert problems == [], problems
    # A dynamic member waits for the killed member's session (20 s) to expire first.
    assert resumed_s < SESSION_TIMEOUT_S / 2
