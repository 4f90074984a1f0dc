"""CPU time of each step of one event's zero-latency path, run in one thread, no Kafka.

Run from the project root:

    .venv/bin/python bench/event_cost.py [--events N]

The steps are the ones the service runs for each event of bench/pipeline.py's in-memory run
(64x64 JPEG and PNG images, all distinct, the `fake` engine at zero latency, a tenant policy
whose surface has no overrides), called one after the other in this thread and timed with the
thread's CPU clock: parse the message, build the job, start the event's telemetry, bind its
log context (twice, as the fetch worker and the engine window's thread do), resolve the policy,
fetch from memory, decode, classify, decide, assemble the verdict and audit record (with the
policy's version, hash and document, as the processor reads them), serialise both records with
their headers, end the telemetry. What this leaves out is what threads add: the
fetch pool and engine window hand-offs, locks, futures, stage spans, the checkpoint's produce
calls. The sum is therefore a floor for the pipeline's CPU per event, and 1 / sum a ceiling for
one process's events/s (docs/performance.md, "CPU per event").
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from moderator import __version__
from moderator.dev.samples import Sample, make_sample
from moderator.emit.records import trace_from_headers, verdict_outputs
from moderator.engine.base import EngineRequest
from moderator.events.parse import parse_message
from moderator.events.s3notify import TenantRule
from moderator.events.verdict import InputCoords, PolicyRef, Timings
from moderator.fetch.decode import DecodeLimits, decode_image
from moderator.fetch.store import InMemoryObjectStore
from moderator.obs.event import EventTelemetry
from moderator.obs.telemetry import Telemetry
from moderator.obs.tracing import TRACER_NAME, build_tracer_provider
from moderator.pipeline.assemble import FrameOutcome, ObjectFacts, Provenance, assemble
from moderator.pipeline.process import Job, event_log_context
from moderator.policy.bundled import write_default_policy
from moderator.service import build_pipeline
from moderator.settings import load_settings

BUCKET = "uploads"
TENANT = "bench"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=2000, help="events to walk through")
    args = parser.parse_args(argv)
    n: int = args.events
    if n < 1:
        parser.error("--events must be at least 1")
    with tempfile.TemporaryDirectory(prefix="moderator-event-cost-") as tmp:
        costs = measure(n, Path(tmp))
    total = sum(costs.values())
    print(f"CPU per event by step, {n} events, one thread (us/event):")
    for step, seconds in sorted(costs.items(), key=lambda kv: -kv[1]):
        print(f"  {step:24s} {1e6 * seconds / n:8.1f}")
    print(f"  {'total':24s} {1e6 * total / n:8.1f}  (at most {n / total:,.0f} events/s per core)")
    bare = bare_pillow(n)
    print(
        f"Pillow alone on the same images (open, load, convert to RGB; no checks, no resize): "
        f"{1e6 * bare / n:.1f} us/image (at most {n / bare:,.0f} images/s per core)"
    )
    return 0


def bare_pillow(n: int) -> float:
    """Seconds of thread CPU for Pillow's own decode of the n bench images: the least any
    decoding of them costs, whatever the pipeline around it."""
    images = [_sample(i).data for i in range(n)]
    started = time.thread_time()
    for data in images:
        with Image.open(io.BytesIO(data)) as im:
            im.convert("RGB")
    return time.thread_time() - started


def _sample(i: int) -> Sample:
    return make_sample("png" if i % 4 == 3 else "jpeg", i, (64, 64))


def measure(n: int, policies: Path) -> dict[str, float]:
    """Seconds of thread CPU per step over n events."""
    write_default_policy(policies)
    (policies / f"{TENANT}.yaml").write_text("on_error: review\n", encoding="utf-8")
    settings = load_settings(
        None,
        {
            "engine.kind": "fake",
            "engine.fake.latency_ms": 0.0,
            "policies.dir": policies,
            "instance_id": "bench",
            "log.level": "warning",
        },
    )
    store = InMemoryObjectStore()
    values = []
    for i in range(n):
        sample = _sample(i)
        key = f"{TENANT}/bench/{i:06d}-{sample.name}"
        store.put(BUCKET, key, sample.data)
        doc = {
            "event_id": f"e-{i:06d}",
            "tenant_id": TENANT,
            "object": {"bucket": BUCKET, "key": key, "size": len(sample.data)},
            "uploaded_at": "2026-01-01T00:00:00Z",
            "context": {"surface": "post"},
        }
        values.append(json.dumps(doc).encode())
    pipeline = build_pipeline(settings, store=store)
    tenancy = settings.tenancy
    rule = TenantRule(tenancy.rule, dict(tenancy.bucket_map), frozenset(tenancy.content_events))
    limits = DecodeLimits.from_settings(settings.fetch)
    tracer = build_tracer_provider("none").get_tracer(TRACER_NAME)
    metrics = Telemetry().metrics
    costs: dict[str, float] = defaultdict(float)

    @contextmanager
    def step(name: str) -> Iterator[None]:
        started = time.thread_time()
        yield
        costs[name] += time.thread_time() - started

    for offset, value in enumerate(values):
        with step("parse message"):
            event = parse_message(value, rule).events[0]
        with step("job"):
            coords = InputCoords(topic="up", partition=0, offset=offset, timestamp_ms=1)
            trace = trace_from_headers(None, event.event_id)
            job = Job(event, coords, trace, time.monotonic())
        with step("start telemetry"):
            obs = EventTelemetry(tracer, metrics, trace, event, coords, job.received)
        with step("log context (x2)"):  # the fetch worker's, then the engine window thread's
            for _ in range(2):
                with event_log_context(job):
                    pass
        with step("resolve policy"):
            policy = pipeline.policies.resolve(event.tenant_id, event.surface)
        assert policy is not None
        with step("fetch (memory)"):
            fetched = store.get(BUCKET, event.object.key, None, 1 << 30)
        with step("decode"):
            image = decode_image(fetched.data, limits, 448, pipeline.processor.decode_budget)
        request = EngineRequest(
            request_id=f"{event.event_id}#0",
            image=image.frames[0],
            prompt=policy.prompt,
            categories=policy.categories,
        )
        with step("classify (fake)"):
            result = pipeline.engine.classify([request])[0]
        assert result.assessment is not None
        with step("decide"):
            outcome = FrameOutcome(
                decision=policy.decide(result.assessment),
                assessment=result.assessment,
                raw_output=result.raw_output,
                generation=result.generation,
            )
        with step("assemble records"):
            verdict, audit = assemble(
                event,
                outcome,
                policy=PolicyRef(
                    tenant_id=event.tenant_id, surface=policy.surface, version=policy.version
                ),
                model=pipeline.engine.info,
                facts=ObjectFacts(
                    sha256=image.sha256, format=image.format, width=image.width, height=image.height
                ),
                source="model",
                timings=Timings(fetch=1.0, total=2.0),
                decided_at=datetime.now(UTC),
                trace_id=trace.trace_id,
                provenance=Provenance(
                    coords=coords,
                    instance_id=settings.instance_id,
                    package_version=__version__,
                    policy_hash=policy.full_hash,
                    prompt_sha256=policy.prompt_sha256,
                    policy_document=policy.document(),
                ),
            )
        with step("serialise records"):
            verdict_outputs(
                verdict,
                audit,
                verdicts_topic="v",
                audit_topic="a",
                source="/moderator/bench",
                trace=obs.trace,
            )
        with step("end telemetry"):
            obs.end(verdict, verdict.source)
    pipeline.close()
    return dict(costs)


if __name__ == "__main__":
    sys.exit(main())
