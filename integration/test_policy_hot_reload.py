"""Hot reload of a tenant policy in a running `moderator run` process (served by a separate
`moderator dev-stack` process): an edit takes effect for the next events, a broken edit keeps the
last good version in force and is reported as `path:line: reason`."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import boto3
from confluent_kafka import Consumer, Producer, TopicPartition
from PIL import Image

from moderator.policy.bundled import write_default_policy
from moderator.policy.registry import PolicyRegistry
from moderator.settings import load_settings

CLI = [sys.executable, "-m", "moderator.cli.main"]
BUCKET = "uploads"
IMAGES = 3  # per phase: images (all Unsafe with unsafe_rate 1.0) ...
MISSING = 3  # ... and events naming objects that do not exist (object_not_found)

# V1: the default rules (every category blocks) and errors go to review.
ACME_V1 = "description: phase 1\non_error: review\n"
# V2: every category goes to review and errors block.
ACME_V2 = "description: phase 2\non_error: block\ncategories:\n" + "".join(
    f"  O{i}: {{action: review}}\n" for i in range(1, 10)
)
# Broken: a threshold above 1 on line 3.
ACME_BROKEN = "on_error: block\ncategories:\n  O3: {block_at: 2}\n"
BROKEN_LINE = 3


class LogTail:
    """Reads a process's stderr (JSON log lines) in a background thread."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._cond = threading.Condition()
        self.lines: list[str] = []
        self.records: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, name="stderr-tail", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            with self._cond:
                self.lines.append(line)
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    self.records.append(record)
                self._cond.notify_all()

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._cond:
            return [r for r in self.records if r.get("event") == name]

    def wait_for(
        self, name: str, match: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for record in self.records:
                    if record.get("event") == name and match(record):
                        return record
                left = deadline - time.monotonic()
                assert left > 0, f"no {name} log line within {timeout}s:\n{self.tail()}"
                self._cond.wait(left)

    def tail(self, n: int = 40) -> str:
        return "".join(self.lines[-n:])

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _stop(proc: subprocess.Popen[Any], timeout: float) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise


@contextmanager
def _dev_stack() -> Iterator[dict[str, str]]:
    """`moderator dev-stack` in a subprocess; its environment (the `export` lines)."""
    proc = subprocess.Popen(
        [*CLI, "dev-stack"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        env: dict[str, str] = {}
        timer = threading.Timer(30, proc.kill)  # never hang on a stack that does not start
        timer.start()
        try:
            for line in proc.stdout:
                if line.strip() == "ready":
                    break
                name, _, value = line.removeprefix("export ").strip().partition("=")
                env[name] = value.strip("'")
        finally:
            timer.cancel()
        assert proc.poll() is None, "dev-stack did not become ready"
        yield env
        assert _stop(proc, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _png(i: int) -> bytes:
    img = Image.new("RGB", (24, 24), ((i * 40) % 256, (i * 90) % 256, (i * 150) % 256))
    img.putpixel(((i * 5) % 24, (i * 3) % 24), (0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


class VerdictReader:
    """One consumer over the verdicts topic (4 partitions, from the start) for the whole test."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "allow.auto.create.topics": True,
            }
        )
        self._consumer.list_topics(topic, timeout=10)  # the mock broker creates it (4 partitions)
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(4)])
        self.seen: dict[str, dict[str, Any]] = {}

    def wait(self, want: set[str], timeout: float, alive: Callable[[], None]) -> None:
        deadline = time.monotonic() + timeout
        while not want <= set(self.seen):
            alive()
            assert time.monotonic() < deadline, f"missing verdicts: {sorted(want - set(self.seen))}"
            for m in self._consumer.consume(100, 0.2):
                value = m.value()
                if m.error() is None and value is not None:
                    doc = json.loads(value)
                    assert doc["event_id"] not in self.seen, f"a second verdict: {doc}"
                    self.seen[doc["event_id"]] = doc

    def close(self) -> None:
        self._consumer.close()


class Traffic:
    """Uploads and events for tenant acme, and their verdicts; closed before the stack stops."""

    def __init__(self, stack_env: dict[str, str], topics: dict[str, str], run_id: str) -> None:
        self._s3 = boto3.client(
            "s3",
            endpoint_url=stack_env["MODERATOR_S3__ENDPOINT_URL"],
            region_name=stack_env["AWS_DEFAULT_REGION"],
            aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=stack_env["AWS_SECRET_ACCESS_KEY"],
        )
        bootstrap = stack_env["MODERATOR_KAFKA__BOOTSTRAP_SERVERS"]
        self._producer = Producer({"bootstrap.servers": bootstrap})
        self._reader = VerdictReader(bootstrap, topics["verdicts"])
        self._topic = topics["uploads"]
        self._run_id = run_id

    def phase(self, n: int, alive: Callable[[], None]) -> dict[str, dict[str, Any]]:
        """Phase n's events: the same images every phase, then missing objects; their verdicts."""
        ids = set()
        for i in range(IMAGES + MISSING):
            event_id = f"p{n}-{i}"
            key = f"acme/{self._run_id}/{event_id}.png"
            if i < IMAGES:
                self._s3.put_object(Bucket=BUCKET, Key=key, Body=_png(i))
            event = {
                "event_id": event_id,
                "tenant_id": "acme",
                "object": {"bucket": BUCKET, "key": key},
            }
            self._producer.produce(self._topic, value=json.dumps(event).encode())
            ids.add(event_id)
        self._producer.flush(10)
        self._reader.wait(ids, 30, alive)
        return {i: self._reader.seen[i] for i in ids}

    def __enter__(self) -> Traffic:
        return self

    def __exit__(self, *exc: object) -> None:
        self._reader.close()
        del self._producer  # its background threads would outlive the stack otherwise
        self._s3.close()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")  # not *.yaml: the poller never reads it
    tmp.write_text(text)
    tmp.replace(path)  # os.replace: readers see the old file or the new one, never a part


def _acme_versions(contents: dict[str, str], scratch: Path) -> dict[str, str]:
    """acme's default-surface version for each file content, by `policy validate` (and the
    registry, which must agree)."""
    tenancy = load_settings().tenancy
    out = {}
    for name, text in contents.items():
        directory = scratch / name
        write_default_policy(directory)
        (directory / "acme.yaml").write_text(text)
        done = subprocess.run(
            [*CLI, "policy", "validate", str(directory)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        rows = {tuple(line.split()[:2]): line.split()[2] for line in done.stdout.splitlines()}
        assert set(rows) == {("acme", "default"), ("default", "default")}
        policy = PolicyRegistry(directory, tenancy).resolve("acme", "default")
        assert policy is not None and policy.version == rows[("acme", "default")]
        out[name] = policy.version
    return out


def test_edit_applies_and_a_broken_edit_keeps_the_last_good_version(tmp_path: Path) -> None:
    expected = _acme_versions({"v1": ACME_V1, "v2": ACME_V2}, tmp_path / "scratch")
    v1, v2 = expected["v1"], expected["v2"]
    assert v1 != v2

    policies = tmp_path / "policies"
    write_default_policy(policies)
    acme = policies / "acme.yaml"
    acme.write_text(ACME_V1)
    run_id = uuid.uuid4().hex[:8]
    topics = {t: f"{t}-{run_id}" for t in ("uploads", "verdicts", "audit", "dlq")}

    with _dev_stack() as stack_env, Traffic(stack_env, topics, run_id) as traffic:
        env = {
            **os.environ,
            **stack_env,
            "MODERATOR_KAFKA__DELIVERY": "at_least_once",
            "MODERATOR_KAFKA__GROUP_ID": f"moderator-{run_id}",
            **{f"MODERATOR_KAFKA__TOPICS__{k.upper()}": v for k, v in topics.items()},
            "MODERATOR_KAFKA__COMMIT_INTERVAL_MS": "200",
            "MODERATOR_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "MODERATOR_ENGINE__FAKE__UNSAFE_RATE": "1.0",
            "MODERATOR_POLICIES__POLL_INTERVAL_S": "0.3",
            "MODERATOR_LOG__LEVEL": "info",
            "MODERATOR_LOG__FORMAT": "json",
        }
        run = subprocess.Popen(
            [*CLI, "run", "--engine", "fake", "--policies", str(policies)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert run.stderr is not None
            logs = LogTail(run.stderr)

            def alive() -> None:
                assert run.poll() is None, f"moderator run exited {run.returncode}:\n{logs.tail()}"

            # phase 1: V1 in force
            first = traffic.phase(1, alive)
            _check(first, v1, image="block", missing="review")
            assert {v["source"] for v in _images(first)} == {"model"}

            # phase 2: an edit, in force from the next poll on
            _atomic_write(acme, ACME_V2)
            changed = logs.wait_for("policy_changed", lambda r: r.get("tenant") == "acme", 15)
            assert (changed["surface"], changed["old"], changed["new"]) == ("default", v1, v2)
            second = traffic.phase(2, alive)
            _check(second, v2, image="review", missing="block")
            # the same images and model input (the fake engine does not read the prompt): the
            # answers of phase 1 from the cache, decided under the new version
            assert {v["source"] for v in _images(second)} == {"cache"}
            assert _assessments(second) == _assessments(first)

            # phase 3: a broken edit is reported and V2 stays in force
            _atomic_write(acme, ACME_BROKEN)
            invalid = logs.wait_for(
                "policy_invalid", lambda r: str(r.get("error", "")).startswith(f"{acme}:"), 15
            )
            assert invalid["error"].startswith(f"{acme}:{BROKEN_LINE}: categories.O3.block_at:")
            third = traffic.phase(3, alive)
            _check(third, v2, image="review", missing="block")
            assert {v["source"] for v in _images(third)} == {"cache"}  # V2's entries from phase 2
            assert _assessments(third) == _assessments(first)

            # `policy validate` reports the same problem as the running service
            done = subprocess.run(
                [*CLI, "policy", "validate", str(policies)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 2 and done.stdout == ""
            assert invalid["error"] in done.stderr.splitlines()

            code = _stop(run, 30)
            logs.join(10)
            assert code == 0, logs.tail()
        finally:
            if run.poll() is None:
                run.kill()
                run.wait(10)
            if run.stderr is not None:
                run.stderr.close()

    # one change (V1 -> V2) and one problem: the broken file changed nothing in force
    assert len(logs.events("policy_changed")) == 1
    assert len(logs.events("policy_invalid")) == 1
    assert not logs.events("policy_reload_failed")


def _images(verdicts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [v for v in verdicts.values() if v["error"] is None]


def _assessments(verdicts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Image index -> assessment (the fake engine's answer depends on the pixels only)."""
    return {k.split("-")[1]: v["assessment"] for k, v in verdicts.items() if v["error"] is None}


def _check(verdicts: dict[str, dict[str, Any]], version: str, *, image: str, missing: str) -> None:
    """Every verdict names acme's default surface at `version`, with the decisions expected."""
    for event_id, verdict in verdicts.items():
        assert verdict["policy"] == {"tenant_id": "acme", "surface": "default", "version": version}
        index = int(event_id.split("-")[1])
        if index < IMAGES:
            assert verdict["error"] is None, verdict
            assert verdict["assessment"]["rating"] == "Unsafe"
            assert verdict["decision"] == image, verdict
        else:
            assert verdict["error"]["code"] == "object_not_found", verdict
            assert verdict["decision"] == missing, verdict
