"""What an image judged before costs: a cache hit and a coalesced event against an engine call.

Run from the project root:

    .venv/bin/python bench/coalesce.py [--engine-ms 100] [--images 20] [--copies 8]
        [--size 1280x960] [--entries 20000]

Everything runs in this process: the real Processor and engine window, objects in an
InMemoryObjectStore, and an engine that sleeps `--engine-ms` per call (a stand-in for a model
on a GPU: only the call's duration matters here). Photo-like JPEGs of `--size` are fetched and
decoded for real by every event that calls the engine; a hit or a coalesced event is answered
before its object is decoded. Events are submitted one at a time, each after the
previous verdict, so that no latency includes queueing behind another event:

1. engine: `--images` distinct images, each judged by the engine (a cache miss);
2. cache hit: a copy of each of them under another key: the verdict cache answers;
3. coalesced: `--copies` copies of a new image submitted at once, for `--images` images: the
   first calls the engine, the others wait for its answer (no engine call of their own).

Latencies are the verdicts' `timings_ms`: `total` from submission to the verdict records ready,
`fetch` the fetch and decode part of it, `infer` the engine call. The ratio printed is the
median cache hit total over the median engine call. It then measures, with tracemalloc, the
memory of a full verdict cache per entry (a still image whose rationale has 300 and 1200
characters, the `rationale_max_chars` default) and of the in-flight table per key and per waiter.
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

from decode_bench import make_photo
from moderator.emit.records import OutRecord, trace_from_headers
from moderator.engine.base import EngineRequest, EngineResult
from moderator.engine.window import EngineWindow
from moderator.events.upload import ObjectRef, UploadEvent
from moderator.events.verdict import Assessment, InputCoords, ModelInfo, Verdict
from moderator.fetch.decode import DecodeLimits
from moderator.fetch.store import InMemoryObjectStore
from moderator.logs import configure_logging
from moderator.pipeline.assemble import ObjectFacts
from moderator.pipeline.cache import Judged, VerdictCache
from moderator.pipeline.coalesce import Answer, Coalescer
from moderator.pipeline.job import Job, OutputTopics
from moderator.pipeline.process import Processor
from moderator.policy.bundled import write_default_policy
from moderator.service import build_policies
from moderator.settings import LogSettings, load_settings

BUCKET = "uploads"
TENANT = "acme"
VERDICTS = "moderation.verdicts"
ANSWER = Assessment(rating="Safe", category="NA: None applying", rationale="x" * 300, score=0.1)


class SleepingEngine:
    """Answers every image Safe after sleeping `latency_s` per call; counts calls and images."""

    def __init__(self, latency_s: float) -> None:
        self._latency = latency_s
        self.calls = 0
        self.items = 0

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(engine="sleeping", name="sleeping")

    @property
    def input_size(self) -> int:
        return 448

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        self.calls += 1
        self.items += len(batch)
        time.sleep(self._latency)
        return [EngineResult(assessment=ANSWER, raw_output="{}") for _ in batch]

    def close(self) -> None:
        pass


class Rig:
    def __init__(self, engine: SleepingEngine, policies_dir: Path) -> None:
        settings = load_settings(overrides={"policies.dir": policies_dir, "engine.kind": "fake"})
        self.engine = engine
        self.store = InMemoryObjectStore()
        self.window = EngineWindow(
            engine, batch_size=8, max_wait_ms=5, concurrency=1, timeout_s=60, retries=0
        )
        self.policies = build_policies(settings)
        self.processor = Processor(
            store=self.store,
            window=self.window,
            model=engine.info,
            input_size=engine.input_size,
            policies=self.policies,
            cache=VerdictCache(settings.cache.max_entries),
            limits=DecodeLimits.from_settings(settings.fetch),
            max_object_bytes=settings.fetch.max_object_bytes,
            concurrency=settings.fetch.concurrency,
            topics=OutputTopics(verdicts=VERDICTS, audit="moderation.audit", source="/bench"),
            instance_id="bench-0",
        )
        self._lock = threading.Condition()
        self._verdicts: dict[str, Verdict] = {}
        self._n = 0

    def run(self, uploads: Sequence[tuple[str, bytes]]) -> list[Verdict]:
        """Submit the uploads (event id, bytes) at once; their verdicts, in the same order."""
        for event_id, data in uploads:
            key = f"{TENANT}/{event_id}.jpg"
            self.store.put(BUCKET, key, data)
            event = UploadEvent(
                event_id=event_id, tenant_id=TENANT, object=ObjectRef(bucket=BUCKET, key=key)
            )
            job = Job(
                event=event,
                coords=InputCoords(topic="uploads", partition=0, offset=self._n),
                trace=trace_from_headers(None, event_id),
                received=time.monotonic(),
            )
            self._n += 1
            self.processor.submit(job, self._done)
        ids = [event_id for event_id, _ in uploads]
        with self._lock:
            if not self._lock.wait_for(lambda: all(i in self._verdicts for i in ids), 120):
                raise RuntimeError("verdicts missing")
            return [self._verdicts.pop(i) for i in ids]

    def _done(self, records: list[OutRecord]) -> None:
        value = next(r.value for r in records if r.topic == VERDICTS)
        verdict = Verdict.model_validate_json(value or b"{}")
        with self._lock:
            self._verdicts[verdict.event_id] = verdict
            self._lock.notify_all()

    def close(self) -> None:
        self.processor.close()
        self.window.close()
        self.policies.close()


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan")


def _row(name: str, values: Sequence[float]) -> str:
    return f"  {name:<42} {_median(values):9.2f} {_p95(values):9.2f}"


def measure_latency(args: argparse.Namespace, policies_dir: Path) -> None:
    width, height = (int(x) for x in args.size.split("x"))
    images = [make_photo(seed, (width, height), quality=85) for seed in range(2 * args.images)]
    engine = SleepingEngine(args.engine_ms / 1000)
    rig = Rig(engine, policies_dir)
    try:
        rig.run([("warm-up", make_photo(10_000, (320, 240)))])
        calls0 = engine.items
        judged = [rig.run([(f"img-{i}", images[i])])[0] for i in range(args.images)]
        calls_judged = engine.items - calls0
        hits = [rig.run([(f"again-{i}", images[i])])[0] for i in range(args.images)]
        calls_hits = engine.items - calls0 - calls_judged
        leaders: list[Verdict] = []
        waiters: list[Verdict] = []
        calls1 = engine.items
        for i in range(args.images):
            data = images[args.images + i]
            group = rig.run([(f"dup-{i}-{c}", data) for c in range(args.copies)])
            leaders += [v for v in group if v.timings_ms.infer > 0]
            waiters += [v for v in group if v.timings_ms.infer == 0]
        calls_coalesced = engine.items - calls1
        coalesced = rig.processor.coalescer.coalesced
    finally:
        rig.close()
    assert all(v.source == "model" for v in judged), "a distinct image was not judged"
    assert all(v.source == "cache" for v in hits), "a repeated image was not a cache hit"
    infer = [v.timings_ms.infer for v in judged]
    judged_total = [v.timings_ms.total for v in judged]
    hit_total = [v.timings_ms.total for v in hits]
    hit_fetch = [v.timings_ms.fetch for v in hits]
    hit_after = [v.timings_ms.total - v.timings_ms.fetch for v in hits]
    print(
        f"\nLatency per event, ms (simulated engine call of {args.engine_ms:g} ms; "
        f"{args.size} photo-like JPEGs, {len(images[0]) // 1024} KB each)"
    )
    print(f"  {'':<42} {'median':>9} {'p95':>9}")
    print(_row("engine call (infer)", infer))
    print(_row(f"judged by the engine: total ({args.images} events)", judged_total))
    print(_row(f"cache hit: total ({args.images} events)", hit_total))
    print(_row("  of which fetch + decode", hit_fetch))
    print(_row("  of which lookup, decide, assemble", hit_after))
    print(
        _row(
            f"coalesced leader: total ({len(leaders)} events)",
            [v.timings_ms.total for v in leaders],
        )
    )
    print(
        _row(
            f"coalesced waiter: total ({len(waiters)} events)",
            [v.timings_ms.total for v in waiters],
        )
    )
    print(
        f"\n  engine images: {calls_judged} for {args.images} distinct, {calls_hits} for "
        f"{args.images} repeats, {calls_coalesced} for {args.images} x {args.copies} copies in "
        f"flight ({coalesced} coalesced)"
    )
    ratio = _median(hit_total) / _median(infer)
    print(f"  cache hit / engine call (medians): {ratio:.3f}  (target <= 0.1)")


def _entry_bytes(n: int, rationale_chars: int, frames: int = 1) -> float:
    """tracemalloc bytes per entry of a full cache of n entries of `frames` frames each."""
    engine = ModelInfo(engine="openai", name="guard")
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = VerdictCache(n)
    for i in range(n):
        sha = f"{i:064x}"
        judged = []
        for frame in range(frames):
            rationale = f"{i} {frame} " + "r" * (rationale_chars - len(f"{i} {frame} "))
            category = "".join(["NA: None", " applying"])  # a fresh string, as parsed answers
            judged.append(
                Assessment(rating="Safe", category=category, rationale=rationale, score=0.1)
            )
        facts = ObjectFacts(sha256=sha, format="JPEG", width=1280, height=960)
        cache.put((sha, "0" * 64, f"{engine.engine}:{engine.name}@"), Judged(tuple(judged), facts))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(cache) == n
    return (after - before) / n


def _flight_bytes(keys: int, waiters: int) -> float:
    """tracemalloc bytes of an in-flight table of `keys` keys with `waiters` waiters each."""
    coalescer = Coalescer(VerdictCache(0), ModelInfo(engine="openai", name="guard"), True)
    shas = [f"{i:064x}" for i in range(keys)]  # the leader's image holds this string anyway
    runs = [object() for _ in range(keys * waiters)]  # stand-ins for the waiters' events

    def waiter(run: object, joined_ns: int, answer: Answer) -> None:
        pass

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, sha in enumerate(shas):
        key = (sha, "0" * 64, "openai:guard@")
        coalescer.claim(key, functools.partial(waiter, None, 0))
        for w in range(waiters):
            coalescer.claim(key, functools.partial(waiter, runs[i * waiters + w], time.time_ns()))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert coalescer.in_flight == keys
    return after - before


def measure_memory(entries: int) -> None:
    print(f"\nMemory (tracemalloc, {entries} entries / keys)")
    for chars, frames in ((300, 1), (1200, 1), (1200, 4)):
        per_entry = _entry_bytes(entries, chars, frames)
        what = f"{frames} frame{'s' if frames > 1 else ''}, {chars}-char rationale"
        print(f"  verdict cache, {what:<30} {per_entry:7.0f} B/entry")
    per_key = _flight_bytes(entries, 0) / entries
    per_waiter = (_flight_bytes(entries, 4) - _flight_bytes(entries, 0)) / (4 * entries)
    print(f"  in-flight table: {per_key:.0f} B per key being judged, {per_waiter:.0f} B per waiter")
    print("  (besides the events themselves, which exist anyway)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-ms", type=float, default=100.0, help="simulated engine call")
    parser.add_argument("--images", type=int, default=20, help="distinct images per phase")
    parser.add_argument("--copies", type=int, default=8, help="copies in flight per image")
    parser.add_argument("--size", default="1280x960", help="WIDTHxHEIGHT of the JPEGs")
    parser.add_argument("--entries", type=int, default=20_000, help="for the memory figures")
    args = parser.parse_args(argv)
    configure_logging(LogSettings(level="warning", format="json"))
    with tempfile.TemporaryDirectory() as tmp:
        policies_dir = Path(tmp)
        write_default_policy(policies_dir)
        (policies_dir / f"{TENANT}.yaml").write_text("on_error: review\n")
        measure_latency(args, policies_dir)
    measure_memory(args.entries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
