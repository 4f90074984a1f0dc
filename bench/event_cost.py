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
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry.trace import Tracer
from PIL import Image

from moderator import __version__
from moderator.dev.samples import Sample, make_sample
from moderator.emit.records import OutRecord, trace_from_headers, verdict_outputs
from moderator.engine.base import EngineRequest, EngineResult
from moderator.events.parse import parse_message
from moderator.events.s3notify import TenantRule
from moderator.events.verdict import InputCoords, PolicyRef, Timings
from moderator.fetch.decode import DecodedImage, DecodeLimits, decode_image
from moderator.fetch.store import InMemoryObjectStore
from moderator.logs import configure_logging
from moderator.obs.event import EventTelemetry
from moderator.obs.metrics import Metrics
from moderator.obs.telemetry import Telemetry
from moderator.obs.tracing import TRACER_NAME, build_tracer_provider
from moderator.pipeline.assemble import FrameOutcome, ObjectFacts, Provenance, assemble
from moderator.pipeline.job import Job, event_log_context
from moderator.policy.base import CompiledPolicy
from moderator.policy.bundled import write_default_policy
from moderator.service import Pipeline, build_pipeline
from moderator.settings import Settings, load_settings

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


Step = Callable[[str], AbstractContextManager[None]]
"""Times one step of an event by name (or does nothing, for callers that time the whole)."""


@dataclass
class Rig:
    """The service's parts for the bench: settings, the pipeline (its policies, engine and
    decode budget), the objects in memory and one message value per event."""

    settings: Settings
    pipeline: Pipeline
    store: InMemoryObjectStore
    values: list[bytes]
    rule: TenantRule
    limits: DecodeLimits
    tracer: Tracer
    metrics: Metrics


@dataclass
class Taken:
    """One event up to its engine request."""

    job: Job
    obs: EventTelemetry
    policy: CompiledPolicy
    image: DecodedImage
    request: EngineRequest


def build_rig(n: int, policies: Path, overrides: dict[str, Any] | None = None) -> Rig:
    """n events of the bench's images, their objects stored, the pipeline built (fake engine
    at zero latency, telemetry as `moderator run` has it by default, settings `overrides`)."""
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
            **(overrides or {}),
        },
    )
    configure_logging(settings.log)  # as `moderator run` does: warnings and errors only
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
    tenancy = settings.tenancy
    tracer = build_tracer_provider("none").get_tracer(TRACER_NAME)
    metrics = Telemetry().metrics
    return Rig(
        settings,
        build_pipeline(settings, store=store, metrics=metrics, tracer=tracer),
        store,
        values,
        TenantRule(tenancy.rule, dict(tenancy.bucket_map), frozenset(tenancy.content_events)),
        DecodeLimits.from_settings(settings.fetch),
        tracer,
        metrics,
    )


def take(rig: Rig, offset: int, step: Step) -> Taken:
    """The event at `offset` from its message to its engine request."""
    with step("parse message"):
        event = parse_message(rig.values[offset], rig.rule).events[0]
    with step("job"):
        coords = InputCoords(topic="up", partition=0, offset=offset, timestamp_ms=1)
        trace = trace_from_headers(None, event.event_id)
        job = Job(event, coords, trace, time.monotonic())
    with step("start telemetry"):
        obs = EventTelemetry(rig.tracer, rig.metrics, trace, event, coords, job.received)
    with step("log context (x2)"):  # the fetch worker's, then the engine window thread's
        for _ in range(2):
            with event_log_context(job):
                pass
    with step("resolve policy"):
        policy = rig.pipeline.policies.resolve(event.tenant_id, event.surface)
    if policy is None:
        raise RuntimeError(f"no policy for {event.tenant_id}")
    with step("fetch (memory)"):
        fetched = rig.store.get(BUCKET, event.object.key, None, 1 << 30)
    with step("decode"):
        image = decode_image(fetched.data, rig.limits, 448, rig.pipeline.processor.decode_budget)
    request = EngineRequest(
        request_id=f"{event.event_id}#0",
        image=image.frames[0],
        prompt=policy.prompt,
        categories=policy.categories,
    )
    return Taken(job, obs, policy, image, request)


def finish(rig: Rig, taken: Taken, result: EngineResult, step: Step) -> list[OutRecord]:
    """The event's records from its engine result, its telemetry ended."""
    if result.assessment is None:
        raise RuntimeError(f"the fake engine failed: {result.error_message}")
    event, policy, image, model = taken.job.event, taken.policy, taken.image, rig.pipeline.engine
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
            model=model.info,
            facts=ObjectFacts(
                sha256=image.sha256, format=image.format, width=image.width, height=image.height
            ),
            source="model",
            timings=Timings(fetch=1.0, total=2.0),
            decided_at=datetime.now(UTC),
            trace_id=taken.job.trace.trace_id,
            provenance=Provenance(
                coords=taken.job.coords,
                instance_id=rig.settings.instance_id,
                package_version=__version__,
                policy_hash=policy.full_hash,
                prompt_sha256=policy.prompt_sha256,
                policy_document=policy.document(),
            ),
        )
    with step("serialise records"):
        records = verdict_outputs(
            verdict,
            audit,
            verdicts_topic="v",
            audit_topic="a",
            source="/moderator/bench",
            trace=taken.obs.trace,
        )
    with step("end telemetry"):
        taken.obs.end(verdict, verdict.source)
    return records


def measure(n: int, policies: Path) -> dict[str, float]:
    """Seconds of thread CPU per step over n events."""
    rig = build_rig(n, policies)
    costs: dict[str, float] = defaultdict(float)

    @contextmanager
    def step(name: str) -> Iterator[None]:
        started = time.thread_time()
        yield
        costs[name] += time.thread_time() - started

    for offset in range(n):
        taken = take(rig, offset, step)
        with step("classify (fake)"):
            result = rig.pipeline.engine.classify([taken.request])[0]
        finish(rig, taken, result, step)
    rig.pipeline.close()
    return dict(costs)


if __name__ == "__main__":
    sys.exit(main())
