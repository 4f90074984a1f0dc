"""Hostile inputs through `moderator run`: it stays alive, answers every event and stays small.

`moderator run` runs as a subprocess against the embedded stack with default settings (the fake
engine aside, and a shorter decode deadline so that the test is quick). The uploads are images
that are small as files and huge or slow to decode, a few ordinary images, and poison messages
(a JSON array nested 5,000 deep, a 5,000-digit number, an event whose context would outgrow an
audit record, a 1.2 MB message that outgrows a DLQ record).
Every upload event must end in a verdict and every poison message in a DLQ record, the process
must still be running afterwards, and its peak RSS (VmHWM, read from /proc before it is
stopped) must stay within the bound docs/operations.md documents ("Memory and time bounds").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from moderator.dev.samples import make_sample
from moderator.dev.stack import EmbeddedStack
from moderator.policy.bundled import write_default_policy
from tests.hostile_images import flat_png, many_frame_gif
from topic_support import read_topic

MiB = 1 << 20
BUCKET = "uploads"
TENANT = "acme"
# CPU seconds. The 200-frame GIF needs 3-6 s (10 s on a slower machine); the RGBA PNG 1-1.6 s
# alone, more beside the other decodes of the run and another test's process.
DECODE_TIMEOUT_S = 2.5
# Start-up (about 100 MiB with the Kafka clients) + fetch.decode_budget_bytes (1 GiB) + the
# objects and frames held (a few MiB here), rounded up. Measured: see docs/operations.md.
RSS_BOUND_MIB = 1400
START_TIMEOUT_S = 30.0
FINISH_TIMEOUT_S = 60.0


def _images() -> dict[str, tuple[bytes, str | None]]:
    """Object name -> (bytes, the verdict's expected error code)."""
    grey = flat_png(7999)  # 62 KB, 61 MiB decoded
    out: dict[str, tuple[bytes, str | None]] = {
        **{f"grey-{i}.png": (grey, None) for i in range(4)},
        "rgba.png": (flat_png(7999, "RGBA"), None),  # 244 MiB decoded, ~560 MiB to convert
        # 500 frames of 2000x2000: over fetch.max_decoded_pixels, refused from the header.
        "frames-500.gif": (many_frame_gif(), "decode_timeout"),
        # 200 frames: under it, stopped by the deadline.
        "frames-200.gif": (many_frame_gif(frames=200), "decode_timeout"),
    }
    for i, kind in enumerate(("jpeg", "png", "gif")):
        sample = make_sample(kind, 300 + i, (320, 240))
        out[f"normal-{i}.{kind}"] = (sample.data, None)
    return out


POISON = {
    "nested": b"[" * 5000,
    "huge-int": json.dumps(
        {"event_id": "huge", "tenant_id": TENANT, "object": {"bucket": BUCKET, "key": "k"}}
    )
    .replace('"k"}', '"k", "size": ' + "9" * 5000 + "}")
    .encode(),
    # Under the 1 MiB message limit, but its context would make an audit record too large for
    # one Kafka record: refused as malformed, kept whole in its DLQ record.
    "big-context": json.dumps(
        {
            "event_id": "ctx",
            "tenant_id": TENANT,
            "object": {"bucket": BUCKET, "key": f"{TENANT}/x.png"},
            "context": {"notes": "n" * 995_000},
        }
    ).encode(),
}
# Over what one DLQ record holds: its DLQ record keeps the first part.
OVERSIZED = b'{"event_id": "big", "pad": "' + b"x" * 1_200_000 + b'"}'


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    write_default_policy(directory)
    (directory / f"{TENANT}.yaml").write_text("on_error: review\n", encoding="utf-8")
    return directory


def test_hostile_inputs_through_run(
    stack: EmbeddedStack, policies: Path, tmp_path: Path, unique: str
) -> None:
    images = _images()
    s3 = stack.s3_client()
    for name, (data, _) in images.items():
        s3.put_object(Bucket=BUCKET, Key=f"{TENANT}/{unique}/{name}", Body=data)
    s3.close()
    uploads = f"hostile-{unique}"
    producer = Producer(
        {"bootstrap.servers": stack.bootstrap_servers, "message.max.bytes": 2_000_000}
    )
    for name in images:
        event = {
            "event_id": name,
            "tenant_id": TENANT,
            "object": {"bucket": BUCKET, "key": f"{TENANT}/{unique}/{name}"},
        }
        producer.produce(uploads, json.dumps(event).encode(), key=name.encode())
    for name, value in POISON.items():
        producer.produce(uploads, value, key=name.encode())
    producer.produce(uploads, OVERSIZED, key=b"oversized")
    assert producer.flush(30) == 0

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODERATOR_", "AWS_"))}

    env["MODERATOR_HTTP__PORT"] = "0"  # no endpoint: tests run side by side
    env.update(stack.env())
    env.update(
        {
            "MODERATOR_INSTANCE_ID": uploads,
            "MODERATOR_KAFKA__GROUP_ID": uploads,
            "MODERATOR_KAFKA__TOPICS__UPLOADS": uploads,
            "MODERATOR_KAFKA__TOPICS__VERDICTS": f"{uploads}-verdicts",
            "MODERATOR_KAFKA__TOPICS__AUDIT": f"{uploads}-audit",
            "MODERATOR_KAFKA__TOPICS__DLQ": f"{uploads}-dlq",
            "MODERATOR_ENGINE__KIND": "fake",
            "MODERATOR_POLICIES__DIR": str(policies),
            "MODERATOR_FETCH__DECODE_TIMEOUT_S": str(DECODE_TIMEOUT_S),
            "MODERATOR_FLOW__DRAIN_GRACE_S": "2",
            "MODERATOR_LOG__FORMAT": "json",
        }
    )
    err_path = tmp_path / "run.stderr"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moderator.cli.main", "run"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )
    try:
        _wait_for_start(proc, err_path)
        verdicts: dict[str, Any] = {}
        dlq: list[Any] = []
        give_up = time.monotonic() + FINISH_TIMEOUT_S
        while time.monotonic() < give_up:
            verdicts = {v["event_id"]: v for v in _read(stack, f"{uploads}-verdicts")}
            dlq = _read(stack, f"{uploads}-dlq", raw=True)
            done = len(verdicts) >= len(images) and len(dlq) >= len(POISON) + 1
            if done or proc.poll() is not None:
                break
            time.sleep(0.5)
        alive = proc.poll() is None
        peak = _vm_hwm(proc.pid) if alive else 0
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    stderr = err_path.read_text(encoding="utf-8", errors="replace")
    print(f"\nmoderator run: peak RSS {peak / MiB:.0f} MiB (bound {RSS_BOUND_MIB} MiB)")
    assert alive, f"moderator run exited with {proc.returncode}:\n{stderr[-4000:]}"
    assert code == 0, stderr[-4000:]
    assert set(verdicts) == set(images), f"missing verdicts: {set(images) - set(verdicts)}"
    for name, (_, expected) in images.items():
        got = (verdicts[name]["error"] or {}).get("code")
        assert got == expected, f"{name}: {got} != {expected} ({verdicts[name]['error']})"
    assert verdicts["frames-200.gif"]["decision"] == "review"
    cut = [value for value in dlq if value not in POISON.values()]
    assert sorted(v for v in dlq if v in POISON.values()) == sorted(POISON.values())  # as they came
    assert len(cut) == 1 and OVERSIZED.startswith(cut[0]) and 990_000 < len(cut[0]) < 1_000_000
    assert peak < RSS_BOUND_MIB * MiB, f"peak RSS {peak / MiB:.0f} MiB"


def _wait_for_start(proc: subprocess.Popen[bytes], err_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = err_path.read_text(encoding="utf-8", errors="replace")
        if proc.poll() is not None:
            pytest.fail(f"moderator run exited with {proc.returncode} at start-up:\n{text[-4000:]}")
        if '"consuming"' in text:
            return
        time.sleep(0.1)
    pytest.fail("moderator run did not start consuming in time")


def _vm_hwm(pid: int) -> int:
    """The process's peak resident set size so far, from the kernel."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def _read(stack: EmbeddedStack, topic: str, *, raw: bool = False) -> list[Any]:
    """Every record of `topic` so far: parsed JSON values, or raw values."""
    values = read_topic(stack.bootstrap_servers, topic, timeout_s=10)
    return values if raw else [json.loads(v or b"{}") for v in values]
