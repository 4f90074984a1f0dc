"""What threads cost the zero-latency path, and what the least work per event would cost.

Run from the project root:

    .venv/bin/python bench/hand_offs.py [--events N] [--chunk N]

The same events as bench/event_cost.py (64x64 JPEG and PNG, all distinct, the `fake` engine at
zero latency, objects in memory, no Kafka), four ways, one after the other in this process:

1. least work: what any consumer of these events must do, written plainly: parse the message's
   JSON, hash the object, decode it to RGB (libjpeg-turbo for JPEG, Pillow for PNG), hash the
   pixels (what the fake engine's answer is drawn from), write both records' JSON (the policy
   document's JSON written once). No validation, no decode limits, no telemetry, no threads.
2. the service's steps, one thread: bench/event_cost.py's steps (parse and validate, telemetry,
   decode with its checks, classify, assemble and serialise both records), `--chunk` events at
   a time through the engine.
3. the same steps in two threads handing over chunks: one takes events up to their engine
   requests, the other classifies each chunk and writes its records. The fewest hand-offs a
   design with a separate engine thread can have.
4. the processor: `Processor.submit` for each event (after parsing it, as the consume loop
   does), its fetch pool and engine window as `moderator run` builds them, with the same
   telemetry; what the service does between the consume loop and the checkpoint.
5. the processor configured like way 3: one fetch worker, no limit on decoding ahead, engine
   batches of `--chunk` (`fetch.concurrency: 1`, `fetch.decode_ahead`, `engine.batch_size`,
   `engine.max_wait_ms: 5`): what of the gap between 3 and 4 is configuration.

For each: events/s, CPU per event (every thread of the process), and the ratio to the least
work. docs/performance.md ("What limits one process") reads them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import simplejpeg
from PIL import Image

from event_cost import BUCKET, TENANT, Rig, Taken, build_rig, finish, take
from moderator.emit.records import OutRecord, trace_from_headers
from moderator.events.parse import parse_message
from moderator.events.verdict import InputCoords
from moderator.pipeline.job import Job

DEFAULT_EVENTS = 3000
DEFAULT_CHUNK = 64


@dataclass
class Run:
    name: str
    events: int
    wall_s: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.events / self.wall_s

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu_s / self.events


@contextmanager
def _quiet(_: str) -> Iterator[None]:
    yield


def _timed(name: str, n: int, work: Callable[[], None]) -> Run:
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return Run(name, n, time.perf_counter() - wall, time.process_time() - cpu)


# -- 1. the least work ----------------------------------------------------------------------------


def least_work(rig: Rig, n: int) -> Run:
    """Parse, hash, decode, hash the pixels, write two JSON records: nothing else."""
    template = json.loads(_one_verdict(rig))
    policy = rig.pipeline.policies.resolve(TENANT, "post")
    if policy is None:
        raise RuntimeError(f"no policy for {TENANT}")
    document = json.dumps(policy.document()).encode()

    def work() -> None:
        for offset in range(n):
            doc = json.loads(rig.values[offset])
            data = rig.store.get(BUCKET, doc["object"]["key"], None, 1 << 30).data
            sha = hashlib.sha256(data).hexdigest()
            if data[:2] == b"\xff\xd8":
                pixels = simplejpeg.decode_jpeg(data, "RGB").tobytes()
            else:
                with Image.open(io.BytesIO(data)) as im:
                    pixels = im.convert("RGB").tobytes()
            drawn = hashlib.sha256(pixels).digest()
            verdict = dict(template, event_id=doc["event_id"])
            verdict["object"] = dict(template["object"], key=doc["object"]["key"], sha256=sha)
            verdict["assessment"] = dict(template["assessment"], score=drawn[0] / 255)
            body = json.dumps(verdict).encode()
            audit = b"".join((b'{"verdict":', body, b',"policy_document":', document, b"}"))
            key = f"{doc['tenant_id']}:{BUCKET}/{doc['object']['key']}".encode()
            _ = [OutRecord("v", key, body, []), OutRecord("a", key, audit, [])]

    return _timed("least work (plain Python, one thread)", n, work)


def _one_verdict(rig: Rig) -> bytes:
    taken = take(rig, 0, _quiet)
    result = rig.pipeline.engine.classify([taken.request])[0]
    value = finish(rig, taken, result, _quiet)[0].value
    if value is None:
        raise RuntimeError("the verdict record has no value")
    return value


# -- 2 and 3. the steps --------------------------------------------------------------------------


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def _answer(rig: Rig, taken: list[Taken]) -> None:
    results = rig.pipeline.engine.classify([t.request for t in taken])
    for t, result in zip(taken, results, strict=True):
        finish(rig, t, result, _quiet)


def one_thread(rig: Rig, n: int, chunk: int) -> Run:
    def work() -> None:
        for events in _chunks(n, chunk):
            _answer(rig, [take(rig, i, _quiet) for i in events])

    return _timed("the service's steps, one thread", n, work)


def two_threads(rig: Rig, n: int, chunk: int) -> Run:
    def work() -> None:
        handed: queue.SimpleQueue[list[Taken] | None] = queue.SimpleQueue()

        def engine_side() -> None:
            while (taken := handed.get()) is not None:
                _answer(rig, taken)

        thread = threading.Thread(target=engine_side, name="bench-engine")
        thread.start()
        for events in _chunks(n, chunk):
            handed.put([take(rig, i, _quiet) for i in events])
        handed.put(None)
        thread.join()

    return _timed(f"the same steps, two threads, chunks of {chunk}", n, work)


# -- 4. the processor -----------------------------------------------------------------------------


def processor(rig: Rig, n: int, name: str = "the processor (fetch pool, engine window)") -> Run:
    processor = rig.pipeline.processor
    # One wake-up at the end, not one per event: the consume loop collects its completions
    # without waiting on each either.
    left, lock, done = [n], threading.Lock(), threading.Event()

    def finished(records: Any) -> None:
        with lock:
            left[0] -= 1
            if not left[0]:
                done.set()

    def work() -> None:
        for offset in range(n):
            event = parse_message(rig.values[offset], rig.rule).events[0]
            coords = InputCoords(topic="up", partition=0, offset=offset, timestamp_ms=1)
            trace = trace_from_headers(None, event.event_id)
            processor.submit(Job(event, coords, trace, time.monotonic()), finished)
        done.wait()

    return _timed(name, n, work)


# -- main -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="events per way")
    parser.add_argument(
        "--chunk", type=int, default=DEFAULT_CHUNK, help="events per hand-off in ways 2 and 3"
    )
    args = parser.parse_args(argv)
    n, chunk = args.events, args.chunk
    if n < 1 or chunk < 1:
        parser.error("--events and --chunk must be at least 1")
    print(f"hand-offs bench: {n} events per way, 64x64 JPEG/PNG, Python {sys.version.split()[0]}")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="moderator-hand-offs-") as tmp:
        like_two_threads = {
            "fetch.concurrency": 1,
            "fetch.decode_ahead": n,
            "engine.batch_size": chunk,
            "engine.max_wait_ms": 5.0,
        }
        ways: list[tuple[Callable[[Rig], Run], dict[str, Any] | None]] = [
            (lambda r: least_work(r, n), None),
            (lambda r: one_thread(r, n, chunk), None),
            (lambda r: two_threads(r, n, chunk), None),
            (lambda r: processor(r, n), None),
            (lambda r: processor(r, n, "the processor, configured like way 3"), like_two_threads),
        ]
        # One rig per way: the processor's verdict cache and decode budget start empty.
        for way, overrides in ways:
            policies = Path(tmp) / f"p{len(runs)}"
            policies.mkdir()
            rig = build_rig(n, policies, overrides)
            try:
                runs.append(way(rig))
            finally:
                rig.pipeline.close()
            print(f"  {runs[-1].name}: {runs[-1].rate:,.0f} events/s", flush=True)
    least = runs[0]
    print()
    widths = max(len(r.name) for r in runs)
    print(
        f"  {'way'.ljust(widths)}  {'events/s':>9}  {'CPU us/event':>12}  {'x least work CPU':>16}"
    )
    for r in runs:
        ratio = r.cpu_us / least.cpu_us
        print(f"  {r.name.ljust(widths)}  {r.rate:9,.0f}  {r.cpu_us:12,.0f}  {ratio:16.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
