"""`moderator run --with-audit-sink` in exactly_once mode on a real Kafka broker, SIGKILLed five
times at random moments during a 1,000-event stream (objects from the embedded S3 server, audit
store in SQLite) and restarted each time with the same transactional id: a read_committed
reader sees exactly one verdict and one audit record per event, the group's offsets end at the
input's end, and the audit store holds exactly one row per event."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from eos_kafka import KafkaWorld, S3Uploads, slow_run_env
from moderator.dev.stack import EmbeddedStack
from tests.eos_scenarios import (
    Names,
    checkpoint_is_broken,
    exactly_once_problems,
    finished,
    outcome,
    progress,
    seed,
)

if TYPE_CHECKING:
    from moderator.dev.kafka.cluster import ApacheKafka

pytestmark = pytest.mark.slow

EVENTS = 1000
KILLS = 5
REPO = Path(__file__).resolve().parent.parent


def _rows(db: Path, sql: str = "SELECT count(*) FROM audit_records") -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(db, timeout=10)
    try:
        return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:  # not migrated yet
        return 0
    finally:
        conn.close()


def _stored_ids(db: Path) -> list[str]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return [row[0] for row in conn.execute("SELECT event_id FROM audit_records")]
    finally:
        conn.close()


def _command() -> list[str]:
    """`moderator run --with-audit-sink`, or the same with the broken checkpoint when this
    test process runs under tests.eos_break_checkpoint."""
    module = "tests.eos_broken_run" if checkpoint_is_broken() else "moderator.cli.main"
    return [sys.executable, "-m", module, "run", "--with-audit-sink"]


def test_sigkilled_five_times_every_event_once(
    apache_kafka: ApacheKafka, stack: EmbeddedStack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    world = KafkaWorld(apache_kafka.bootstrap_servers)
    request.addfinalizer(world.close)
    names = Names.unique("kill")
    world.create_topics(names.topics)
    uploads = S3Uploads(stack)
    ids, malformed = seed(world, uploads, names, EVENTS, malformed_every=50)
    uploads.wait()
    db, logs = tmp_path / "audit.db", tmp_path / "run.log"
    env = {
        **slow_run_env(
            apache_kafka.bootstrap_servers,
            stack,
            names,
            tmp_path,
            instance_id="eos-kill",
            session_timeout_ms=6000,
        ),
        "MODERATOR_AUDIT__URL": f"sqlite:///{db}",
        "MODERATOR_AUDIT__BATCH_SIZE": "50",
    }
    procs: list[subprocess.Popen[bytes]] = []

    def start(**over: str) -> subprocess.Popen[bytes]:
        with logs.open("ab") as log:
            run_env = {**env, **over}
            procs.append(subprocess.Popen(_command(), env=run_env, cwd=REPO, stderr=log))
        return procs[-1]

    def tail() -> str:
        return logs.read_text(errors="replace")[-3000:]

    rng = random.Random(7)
    at_kill: list[int] = []
    started = time.monotonic()
    try:
        for _ in range(KILLS):
            proc = start()
            before = at_kill[-1] if at_kill else 0
            deadline = time.monotonic() + 60
            while progress(world, names) <= before:  # this run has committed something
                assert proc.poll() is None, tail()
                assert time.monotonic() < deadline, (at_kill, tail())
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.0))  # then a random moment, likely mid-transaction
            proc.kill()
            proc.wait(10)
            at_kill.append(progress(world, names))
        # never killed: the rest goes through in batches of 16, as fast as the engine allows
        final = start(MODERATOR_ENGINE__BATCH_SIZE="16")
        deadline = time.monotonic() + 180
        while not finished(world, names):
            assert final.poll() is None, tail()
            assert time.monotonic() < deadline, (at_kill, tail())
            time.sleep(0.2)
        result = outcome(world, names)
        published = len(result.audit_counts())
        while _rows(db) < published:  # the sink stores what the audit topic holds
            assert final.poll() is None, tail()
            assert time.monotonic() < deadline, (at_kill, _rows(db), published, tail())
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        time.sleep(1.0)  # its signal handlers are surely installed by now
        final.send_signal(signal.SIGTERM)
        assert final.wait(60) == 0, tail()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    print(
        f"\ninput committed at each SIGKILL: {at_kill} of {EVENTS}; done in {elapsed:.1f}s "
        f"including {KILLS} restarts"
    )
    assert 0 < at_kill[-1] < EVENTS, "the kills did not land mid-run"
    problems = exactly_once_problems(result, ids, malformed)
    assert problems == [], problems
    stored = _stored_ids(db)
    assert len(stored) == len(ids), f"{len(stored)} audit rows for {len(ids)} events"
    assert set(stored) == ids
