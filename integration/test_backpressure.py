"""Backpressure: a slow engine and a 5,000-event backlog must not grow `moderator run`'s memory.

`moderator run` runs as a subprocess against the embedded stack, configured only through its
environment. The engine is slow on purpose (the fake engine sleeps per batch), so the backlog
cannot be worked off within the measuring window: it has to stay queued in Kafka, not in the
process. The test samples the subprocess's resident set size every 50 ms and checks it against
the bound documented in docs/operations.md ("Memory bound and backpressure").

A control run with the water marks and the decode-ahead limit out of the way (and a large
librdkafka prefetch) reads the same backlog, so the printed pair of peaks shows what the bound is
worth. With only the water marks out of the way, the decode-ahead limit (fetch.decode_ahead)
alone keeps the frames down: such a control run peaked at 156-165 MiB.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from confluent_kafka import Producer

from moderator.dev.samples import make_sample
from moderator.dev.stack import EmbeddedStack
from moderator.policy.bundled import write_default_policy
from topic_support import read_topic

pytestmark = pytest.mark.slow

MiB = 1 << 20
BUCKET = "uploads"
TENANT = "acme"
EVENTS = 5_000
# Distinct JPEGs, 400x300 (~11-42 KB, ~360 KB once decoded to RGB). Copies of one image in
# flight share one decode and one engine call (coalescing), so the control run needs many
# distinct images for its memory to grow: with 50, its peak stayed near 170 MiB.
IMAGES = 1000
IMAGE_SIZE = (400, 300)

# The slow engine: one 50 ms sleep per batch of 2 images, one batch at a time (<= 40 events/s).
ENGINE_LATENCY_MS = 50
ENGINE_BATCH = 2

# The bounded run's settings (documented with the bound in docs/operations.md).
HIGH_IN_FLIGHT = 200
LOW_IN_FLIGHT = 100
PREFETCH_KBYTES = 1024
DRAIN_GRACE_S = 2.0

# Peak RSS allowed for the bounded run (docs/operations.md). Measured with the settings above
# (Linux x86-64, CPython 3.11, 2 cores): 75 MiB after start-up, peaks of 179-187 MiB, reached
# within 5 s and flat after that. The bound is 1.5x the highest peak measured.
RSS_BOUND_MIB = 280

WINDOW_S = 30.0  # bounded run: how long the backlog is worked on before SIGTERM
# The control's memory grows for as long as it runs (about 100 MiB/s on 2 cores, to ~2 GiB when
# it has decoded the whole backlog); a short window shows the difference and keeps it affordable.
CONTROL_WINDOW_S = 12.0
SAMPLE_EVERY_S = 0.05
START_TIMEOUT_S = 30.0
# After SIGTERM: the drain grace, then the final checkpoint, closing the engine window (up to
# 5 s) and flushing the producer (up to 5 s).
EXIT_TIMEOUT_S = DRAIN_GRACE_S + 20.0


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("policies")
    write_default_policy(directory)
    (directory / f"{TENANT}.yaml").write_text("on_error: review\n", encoding="utf-8")
    return directory


@pytest.fixture
def backlog(stack: EmbeddedStack, unique: str) -> str:
    """Upload the images and queue EVENTS upload events; return the uploads topic."""
    s3 = stack.s3_client()
    keys = []
    for i in range(IMAGES):
        sample = make_sample("jpeg", 1000 + i, IMAGE_SIZE)
        key = f"{TENANT}/backpressure-{unique}/{sample.name}"
        s3.put_object(Bucket=BUCKET, Key=key, Body=sample.data, ContentType=sample.content_type)
        keys.append(key)
    s3.close()

    topic = f"bp-uploads-{unique}"
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers, "linger.ms": 20})
    failures: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    for i in range(EVENTS):
        key = keys[i % IMAGES]
        event = {
            "event_id": f"bp-{i:05d}",
            "tenant_id": TENANT,
            "object": {"bucket": BUCKET, "key": key},
        }
        while True:
            try:
                producer.produce(
                    topic, key=key.encode(), value=json.dumps(event).encode(), on_delivery=delivered
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(30)
    assert left == 0 and not failures, f"backlog not queued: {left} unsent, {failures[:1]}"
    return topic


# -- one `moderator run` under measurement ------------------------------------------------------


@dataclass
class RunReport:
    name: str
    exit_code: int | None
    exit_after_sigterm_s: float
    peak_rss: int
    started_rss: int
    samples: int
    timeline: list[int]  # peak RSS of each 5 s slice since the process started
    verdicts: int
    verdict_errors: list[str]
    logs: list[dict[str, Any]] = field(default_factory=list)
    stderr: str = ""

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.logs if line.get("event") == name]

    def summary(self) -> str:
        draining = self.events("draining")
        drained = self.events("drained")
        return (
            f"[{self.name}] peak RSS {self.peak_rss / MiB:.1f} MiB "
            f"(after start-up {self.started_rss / MiB:.1f} MiB, {self.samples} samples); "
            f"verdicts {self.verdicts}; pauses {len(self.events('paused'))}; "
            f"in flight at SIGTERM {draining[-1].get('in_flight') if draining else '?'}; "
            f"events taken {drained[-1].get('events') if drained else '?'}; "
            f"exit {self.exit_code} {self.exit_after_sigterm_s:.1f}s after SIGTERM; "
            f"RSS per 5 s (MiB): {' '.join(str(r // MiB) for r in self.timeline)}"
        )


def _environment(
    stack: EmbeddedStack, uploads: str, policies: Path, name: str, flow: dict[str, str]
) -> tuple[dict[str, str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODERATOR_", "AWS_"))}
    env["MODERATOR_HTTP__PORT"] = "0"  # no endpoint: tests run side by side
    env.update(stack.env())
    tag = f"{uploads}-{name}"
    verdicts = f"{tag}-verdicts"
    env.update(
        {
            "MODERATOR_INSTANCE_ID": tag,
            "MODERATOR_KAFKA__GROUP_ID": tag,
            "MODERATOR_KAFKA__TOPICS__UPLOADS": uploads,
            "MODERATOR_KAFKA__TOPICS__VERDICTS": verdicts,
            "MODERATOR_KAFKA__TOPICS__AUDIT": f"{tag}-audit",
            "MODERATOR_KAFKA__TOPICS__DLQ": f"{tag}-dlq",
            "MODERATOR_ENGINE__KIND": "fake",
            "MODERATOR_ENGINE__FAKE__LATENCY_MS": str(ENGINE_LATENCY_MS),
            "MODERATOR_ENGINE__BATCH_SIZE": str(ENGINE_BATCH),
            "MODERATOR_CACHE__MAX_ENTRIES": "0",  # repeated bytes must still reach the engine
            "MODERATOR_POLICIES__DIR": str(policies),
            "MODERATOR_FLOW__DRAIN_GRACE_S": str(DRAIN_GRACE_S),
            "MODERATOR_LOG__LEVEL": "info",
            "MODERATOR_LOG__FORMAT": "json",
            **flow,
        }
    )
    return env, verdicts


def _run(
    stack: EmbeddedStack,
    uploads: str,
    policies: Path,
    workdir: Path,
    *,
    name: str,
    flow: dict[str, str],
    window_s: float,
) -> RunReport:
    env, verdicts_topic = _environment(stack, uploads, policies, name, flow)
    err_path = workdir / f"{name}.stderr"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moderator.cli.main", "run"],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )
    peak = [0]
    samples: list[tuple[float, int]] = []
    sampler = threading.Thread(target=_sample, args=(proc, peak, samples), daemon=True)
    sampler.start()
    try:
        started_at = _wait_for_start(proc, err_path)
        time.sleep(window_s)
        still_running = proc.poll() is None
        count, errors = _count_verdicts(stack.bootstrap_servers, verdicts_topic)
        assert still_running, (
            f"moderator run ({name}) exited early with {proc.returncode}:\n{_tail(err_path)}"
        )
        proc.send_signal(signal.SIGTERM)
        term = time.monotonic()
        try:
            code: int | None = proc.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        exit_after = time.monotonic() - term
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sampler.join(5)
    started_rss = next((rss for t, rss in samples if t >= started_at), 0)
    timeline: list[int] = []
    if samples:
        first = samples[0][0]
        for t, rss in samples:
            slot = int((t - first) // 5)
            timeline.extend([0] * (slot + 1 - len(timeline)))
            timeline[slot] = max(timeline[slot], rss)
    text = err_path.read_text(encoding="utf-8", errors="replace")
    return RunReport(
        name=name,
        exit_code=code,
        exit_after_sigterm_s=exit_after,
        peak_rss=peak[0],
        started_rss=started_rss,
        samples=len(samples),
        timeline=timeline,
        verdicts=count,
        verdict_errors=errors,
        logs=_json_lines(text),
        stderr=text,
    )


def _sample(proc: subprocess.Popen[bytes], peak: list[int], out: list[tuple[float, int]]) -> None:
    try:
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            rss = ps.memory_info().rss
            out.append((time.monotonic(), rss))
            peak[0] = max(peak[0], rss)
            time.sleep(SAMPLE_EVERY_S)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return


def _wait_for_start(proc: subprocess.Popen[bytes], err_path: Path) -> float:
    """Wait for the `consuming` log line; fail with the process's stderr if it exits first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"moderator run exited with {proc.returncode} at start-up:\n{_tail(err_path)}"
            )
        if any(line.get("event") == "consuming" for line in _json_lines(_read(err_path))):
            return time.monotonic()
        time.sleep(0.1)
    pytest.fail(f"moderator run did not start consuming in {START_TIMEOUT_S}s:\n{_tail(err_path)}")


def _count_verdicts(bootstrap: str, topic: str) -> tuple[int, list[str]]:
    """Read the verdict topic to its end; return the count and the errors verdicts carry."""
    verdicts = [json.loads(v or b"{}") for v in read_topic(bootstrap, topic)]
    return len(verdicts), [str(v["error"]) for v in verdicts if v.get("error")]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(_read(path).splitlines()[-lines:])


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue  # librdkafka / standard-library log lines are plain text
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line still being written
        if isinstance(doc, dict):
            out.append(doc)
    return out


# -- the test -----------------------------------------------------------------------------------


@pytest.mark.memory
def test_peak_rss_stays_bounded_with_a_slow_engine_and_a_backlog(
    stack: EmbeddedStack, policies: Path, backlog: str, tmp_path: Path
) -> None:
    bounded = _run(
        stack,
        backlog,
        policies,
        tmp_path,
        name="bounded",
        window_s=WINDOW_S,
        flow={
            "MODERATOR_FLOW__HIGH_IN_FLIGHT": str(HIGH_IN_FLIGHT),
            "MODERATOR_FLOW__LOW_IN_FLIGHT": str(LOW_IN_FLIGHT),
            "MODERATOR_KAFKA__QUEUED_MAX_MESSAGES_KBYTES": str(PREFETCH_KBYTES),
        },
    )
    print("\n" + bounded.summary())
    control = _run(
        stack,
        backlog,
        policies,
        tmp_path,
        name="control",
        window_s=CONTROL_WINDOW_S,
        flow={
            "MODERATOR_FLOW__HIGH_IN_FLIGHT": "100000",
            "MODERATOR_FLOW__LOW_IN_FLIGHT": "50000",
            "MODERATOR_FLOW__HIGH_BUFFERED_BYTES": str(64 << 30),
            "MODERATOR_FETCH__DECODE_AHEAD": "100000",
            "MODERATOR_FLOW__LOW_BUFFERED_BYTES": str(32 << 30),
            "MODERATOR_KAFKA__QUEUED_MAX_MESSAGES_KBYTES": str(256 * 1024),
        },
    )
    print(control.summary())
    print(
        f"peak RSS: bounded {bounded.peak_rss / MiB:.1f} MiB, "
        f"control {control.peak_rss / MiB:.1f} MiB (bound {RSS_BOUND_MIB} MiB)"
    )

    for run in (bounded, control):
        assert run.exit_code == 0, (
            f"{run.name}: exit {run.exit_code} ({run.exit_after_sigterm_s:.1f}s after SIGTERM)"
            f"\n{run.stderr[-4000:]}"
        )
        assert run.verdicts > 0, f"{run.name}: no verdict within the window\n{run.stderr[-4000:]}"
        assert not run.verdict_errors, f"{run.name}: verdicts with errors: {run.verdict_errors[:3]}"

    # The bounded run paused, never held more than the high-water mark, and left the backlog in
    # Kafka (the slow engine cannot work off 5,000 events in the window).
    paused = bounded.events("paused")
    assert paused, f"bounded run never paused\n{bounded.stderr[-4000:]}"
    in_flight_seen = [e["in_flight"] for e in paused + bounded.events("draining")]
    assert max(in_flight_seen) <= HIGH_IN_FLIGHT, in_flight_seen
    resumed = bounded.events("resumed")
    assert resumed, "bounded run paused but never resumed"
    assert all(e["in_flight"] <= LOW_IN_FLIGHT for e in resumed), resumed
    taken = bounded.events("drained")[-1]["events"]
    assert taken < EVENTS, f"the backlog was worked off ({taken} events): the engine is not slow"

    # Without the water marks the process took in far more work than the high-water mark.
    assert not control.events("paused")
    control_in_flight = control.events("draining")[-1]["in_flight"]
    assert control_in_flight > HIGH_IN_FLIGHT, control.summary()

    assert bounded.peak_rss < RSS_BOUND_MIB * MiB, bounded.summary()
    # The bound means something: the same process without the water marks goes past it.
    assert control.peak_rss > RSS_BOUND_MIB * MiB, control.summary()
