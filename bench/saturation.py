"""How full the `openai` engine keeps a continuous-batching server, next to a naive consumer.

Run from the project root:

    .venv/bin/python bench/saturation.py [--events N] [--naive-events M] [--quick]
        [--slots 16] [--alpha 0.1] [--beta 0.004] [--jitter 0.1] [--slow-rate 0.01]
        [--slow-factor 4] [--error-rate 0.005] [--timeout 300]
        [--high-in-flight H --low-in-flight L] [--variants naive,barrier:2x8,fixed:16,adaptive]

Defaults: 2000 events per variant, 100 for the naive one (--quick: 200 and 10). A run with the
defaults takes about two minutes; each variant first joins a consumer group (3 s on the mock
broker).

The server is simulated (moderator/dev/openai/simulator.py) in a child process of its own: an
OpenAI-compatible /v1/chat/completions that answers a valid guard verdict, with `--slots`
requests running together; a request admitted while b run (itself included) takes
alpha + beta x b seconds, scaled by up to +-jitter, a share `--slow-rate` of them
`--slow-factor` times longer, and a share `--error-rate` is answered HTTP 500 at once (the
client retries them). Its ceiling is slots / mean service time with every slot busy: no client
can serve more items per second.

Everything else is the real service: `run_service` on the embedded broker (librdkafka's mock
cluster, in this process), `engine.kind: openai` pointed at the simulator, the objects in an
InMemoryObjectStore (64x64 images, all distinct, so the verdict cache never answers). Each
variant reads its own input topic (N events; M for the naive one) through its own consumer
group and writes its own output topics; a reader counts the verdict and audit records by event
id, so a lost or duplicated verdict shows. The service runs with its default settings except
the engine's and, when given, `--high-in-flight`/`--low-in-flight` (the flow water marks: how
many events the consumer takes in before pausing, and where it resumes).

Variants (`--variants`, comma-separated):
- naive: one request at a time (engine.openai.max_in_flight 1, batch size 1);
- barrier:CxB: the engine window forms batches of B and runs C of them at once, each batch
  waiting for its slowest item before the next one starts; this is how the engine was fed
  before per-item dispatch (here with the same in-flight cap, C x B);
- fixed:K: per-item dispatch with a fixed cap of K requests in flight (no adaptation);
- adaptive[:K]: the defaults: per-item dispatch, the adaptive (AIMD) limit up to
  engine.openai.max_in_flight (K when given).

Figures, from the simulator unless said otherwise: occupancy is the mean share of busy slots
from the first admission to the last completion; items/s the requests served per second over
the same span; "x ceiling" their ratio. "steady occ." and "steady x ceil." are the same between
the 10% and the 90% verdict read, leaving out the start (the consumer's first fetches, the
in-flight limit's first rounds) and the drain of the last requests; "queue" is the mean number
of requests waiting at the server for a slot. "x naive" is items/s over the naive variant's.
"ev/s" is end to end, from the first message consumed to the last verdict read. Retries are
HTTP attempts beyond the first (from the audit records), errors verdicts that carry an error,
p50/p95 the engine time per item (verdict timings: from the item's dispatch to the engine to
its answer). "limit" is the engine's in-flight limit, sampled every 50 ms. "server cores" is the
simulator process's CPU time over its wall time, "client cores" this process's (service,
broker, reader) over the active span. The machine's load average at the start and the end is
printed too: other work on the machine competes for the same CPUs, and on a small machine it
shows in every figure. The exit status is 1 when a verdict or audit record was lost or
duplicated.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

from confluent_kafka import Consumer, KafkaError

from moderator.dev.openai.simulator import BatchingModel, SimulatorProcess, SimulatorStats
from moderator.dev.stack import EmbeddedStack
from moderator.engine.base import Capabilities, EngineRequest, EngineResult
from moderator.engine.openai.engine import OpenAIEngine
from moderator.events.verdict import ModelInfo
from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.kafka import consumer_config
from moderator.ingest.ports import Consumer as ConsumerPort
from moderator.logs import configure_logging
from moderator.service import build_pipeline, run_service
from moderator.settings import OpenAISettings, Settings, load_settings
from pipeline import (
    BUCKET,
    CONSUME_BATCH,
    _all_partitions,
    _cpu_line,
    _make_images,
    _object_key,
    _publish_events,
    _TimedConsumer,
    _write_policies,
    print_rows,
)

DEFAULT_EVENTS = 2000
DEFAULT_NAIVE_EVENTS = 100
QUICK_EVENTS = 200
QUICK_NAIVE_EVENTS = 10
DEFAULT_VARIANTS = "naive,barrier:2x8,fixed:16,adaptive"
SERVED_MODEL = "sim-guard"
SAMPLE_EVERY_S = 0.05  # how often the adaptive limit is sampled


@dataclass(frozen=True)
class Variant:
    """One way of feeding the server."""

    key: str
    label: str
    overrides: dict[str, Any]
    barrier: bool = False
    naive: bool = False


@dataclass
class Outcome:
    """One variant's run."""

    variant: Variant
    events: int
    server: SimulatorStats | None = None
    steady: SimulatorStats | None = None  # between the 10% and the 90% verdict
    start: SimulatorStats | None = None  # the first admission to the 10% verdict
    drain: SimulatorStats | None = None  # the 90% verdict to the last answer
    verdicts: int = 0
    audits: int = 0
    duplicates: int = 0
    errors: int = 0
    retries: int = 0
    active_s: float = 0.0
    wall_s: float = 0.0  # the whole run: service start, group join, drain and close included
    join_s: float = 0.0  # service start to the first message consumed (the group join)
    cpu_s: float = 0.0
    infer_ms: list[float] = field(default_factory=list)
    limits: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.events - self.verdicts

    @property
    def rate(self) -> float:
        """End to end: verdicts per second from the first message consumed."""
        return self.verdicts / self.active_s if self.active_s > 0 else 0.0

    @property
    def client_cores(self) -> float:
        return self.cpu_s / self.active_s if self.active_s > 0 else 0.0


class BatchBarrier:
    """The `openai` engine seen only through the batch interface, so that the window batches
    in front of it as it did before per-item dispatch: every call sends its items together and
    returns when the slowest has answered."""

    capabilities: ClassVar[Capabilities] = OpenAIEngine.capabilities

    def __init__(self, engine: OpenAIEngine) -> None:
        self._engine = engine

    @property
    def info(self) -> ModelInfo:
        return self._engine.info

    @property
    def input_size(self) -> int:
        return self._engine.input_size

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        return self._engine.classify(batch)

    def close(self) -> None:
        self._engine.close()


def parse_variant(spec: str) -> Variant:
    """`naive`, `barrier:CxB`, `fixed:K` or `adaptive` as a Variant."""
    name, _, arg = spec.strip().partition(":")
    if name == "naive" and not arg:
        return Variant(
            "naive",
            "naive: one request at a time",
            _engine(1, 1, max_in_flight=1, adaptive=False),
            naive=True,
        )
    if name == "barrier":
        c, _, b = arg.partition("x")
        if not (c.isdigit() and b.isdigit() and int(c) > 0 and int(b) > 0):
            raise ValueError(f"barrier needs CxB, e.g. barrier:2x8, got {spec!r}")
        cap = int(c) * int(b)
        return Variant(
            f"barrier-{c}x{b}",
            f"batch barrier, {c} x {b}",
            _engine(int(c), int(b), max_in_flight=cap, adaptive=False),
            barrier=True,
        )
    if name == "fixed" and arg.isdigit() and int(arg) > 0:
        return Variant(
            f"fixed-{arg}",
            f"per item, fixed cap {arg}",
            _engine(1, 8, max_in_flight=int(arg), adaptive=False),
        )
    if name == "adaptive" and (not arg or (arg.isdigit() and int(arg) > 0)):
        default = OpenAISettings.model_fields["max_in_flight"].default
        cap = int(arg) if arg else default
        openai: dict[str, Any] = {} if cap == default else {"max_in_flight": cap}
        return Variant(f"adaptive-{cap}", f"per item, adaptive up to {cap}", {"openai": openai})
    raise ValueError(f"unknown variant {spec!r}: naive, barrier:CxB, fixed:K or adaptive[:K]")


def _engine(concurrency: int, batch: int, **openai: Any) -> dict[str, Any]:
    return {"concurrency": concurrency, "batch_size": batch, "max_wait_ms": 5.0, "openai": openai}


# -- one run ---------------------------------------------------------------------------------------


def _settings(
    bootstrap: str,
    policies: Path,
    url: str,
    topic: str,
    variant: Variant,
    run_id: str,
    flow: dict[str, int],
) -> Settings:
    prefix = f"sat-{variant.key}-{run_id}"
    engine = {
        "kind": "openai",
        "base_url": url,
        "model": SERVED_MODEL,
        "timeout_s": 60.0,
        **variant.overrides,
    }
    engine["openai"] = {"logprobs": False, **variant.overrides.get("openai", {})}
    overrides: dict[str, Any] = {
        "instance_id": "bench",
        "engine": engine,
        "kafka.bootstrap_servers": bootstrap,
        "kafka.delivery": "at_least_once",  # the mock broker cannot do exactly-once
        "kafka.group_id": prefix,
        "kafka.topics.uploads": topic,
        "kafka.topics.verdicts": f"{prefix}-verdicts",
        "kafka.topics.audit": f"{prefix}-audit",
        "kafka.topics.dlq": f"{prefix}-dlq",
        "policies.dir": policies,
        "http.port": 0,
        "log.level": "error",
        **{f"flow.{key}": value for key, value in flow.items()},
    }
    return load_settings(None, overrides)


def run_variant(
    settings: Settings,
    variant: Variant,
    n: int,
    sim: SimulatorProcess,
    store: InMemoryObjectStore,
    timeout_s: float,
) -> Outcome:
    outcome = Outcome(variant, n)
    engine = OpenAIEngine(settings.engine)
    pipeline = build_pipeline(
        settings, store=store, engine=BatchBarrier(engine) if variant.barrier else engine
    )
    consumer = _TimedConsumer(consumer_config(settings))
    reader = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"{settings.kafka.group_id}-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "allow.auto.create.topics": True,
            "fetch.wait.max.ms": 10,
        }
    )
    topics = settings.kafka.topics
    reader.assign(_all_partitions(reader, topics.verdicts) + _all_partitions(reader, topics.audit))
    stop = threading.Event()
    failures: list[BaseException] = []
    sampling = threading.Event()

    def serve() -> None:
        try:
            run_service(settings, stop, pipeline=pipeline, consumer=cast("ConsumerPort", consumer))
        except BaseException as exc:  # reported after the run; the bench must not hang
            failures.append(exc)
            stop.set()

    def sample_limit() -> None:
        while not sampling.wait(SAMPLE_EVERY_S):
            if consumer.first_message_at is not None:
                outcome.limits.append(engine.in_flight_limit)

    verdicts: set[str] = set()
    audits: set[str] = set()
    tenth: SimulatorStats | None = None
    ninetieth: SimulatorStats | None = None
    sim.reset()
    worker = threading.Thread(target=serve, name="moderator-bench", daemon=True)
    sampler = threading.Thread(target=sample_limit, name="limit-sampler", daemon=True)
    began = time.perf_counter()
    deadline = began + timeout_s
    worker.start()
    sampler.start()
    try:
        while (len(verdicts) < n or len(audits) < n) and time.perf_counter() < deadline:
            if stop.is_set():
                break
            for msg in reader.consume(CONSUME_BATCH, 0.05):
                value, err = msg.value(), msg.error()
                if err is not None or not value:
                    if err is not None and err.code() != KafkaError._PARTITION_EOF:
                        outcome.notes.append(f"reader: {err}")
                    continue
                doc = json.loads(value)
                if msg.topic() == topics.audit:
                    audits.add(doc["verdict"]["event_id"])
                    outcome.retries += max(0, int(doc["generation"].get("attempts", 1)) - 1)
                    continue
                if doc["event_id"] in verdicts:
                    outcome.duplicates += 1
                    continue
                verdicts.add(doc["event_id"])
                if doc.get("error") is not None:
                    outcome.errors += 1
                    if outcome.errors == 1:
                        outcome.notes.append(f"first verdict error: {doc['error']}")
                else:
                    outcome.infer_ms.append(float(doc["timings_ms"]["infer"]))
                if len(verdicts) == n // 10:
                    tenth = outcome.start = sim.stats()
                elif len(verdicts) == n - n // 10 and tenth is not None:
                    ninetieth = sim.stats()
                    outcome.steady = ninetieth.since(tenth)
                if len(verdicts) == n:
                    done = time.perf_counter()
                    outcome.cpu_s = time.process_time() - consumer.first_message_cpu
                    outcome.active_s = done - (consumer.first_message_at or done)
        outcome.server = sim.stats()
        if ninetieth is not None:
            outcome.drain = outcome.server.since(ninetieth)
        outcome.join_s = (consumer.first_message_at or began) - began
    finally:
        sampling.set()
        reader.close()
        stop.set()
        worker.join(settings.flow.drain_grace_s + 30)
        sampler.join()
    if failures:
        raise RuntimeError(f"{variant.label}: the service failed: {failures[0]!r}") from failures[0]
    outcome.verdicts, outcome.audits = len(verdicts), len(audits)
    if outcome.verdicts < n:
        outcome.notes.append(f"TIMED OUT: {outcome.verdicts} of {n} verdicts")
    return outcome


# -- report ----------------------------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _describe_model(model: BatchingModel) -> str:
    parts = [
        f"{model.slots} slots",
        f"service {model.alpha_s:g} + {model.beta_s:g} x b s",
    ]
    if model.jitter:
        parts.append(f"jitter +-{model.jitter:.0%}")
    if model.slow_rate:
        parts.append(f"{model.slow_rate:.1%} slow x{model.slow_factor:g}")
    if model.error_rate:
        parts.append(f"{model.error_rate:.1%} HTTP 500")
    return ", ".join(parts) + f"; ceiling {model.ceiling:.1f} items/s"


def _load() -> str:
    """The machine's 1-minute load average: other work competes with the run for the CPUs."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def print_table(outcomes: Sequence[Outcome], model: BatchingModel, load_at_start: str) -> None:
    naive = next((o for o in outcomes if o.variant.naive and o.server), None)
    header = (
        "variant",
        "events",
        "occupancy",
        "items/s",
        "x ceiling",
        "steady occ.",
        "steady x ceil.",
        "queue",
        "x naive",
        "ev/s",
        "lost",
        "dup",
        "errors",
        "retries",
        "p50 ms",
        "p95 ms",
        "limit",
        "server cores",
        "client cores",
    )
    rows: list[tuple[str, ...]] = [header]
    for o in outcomes:
        s = o.server
        if s is None:
            continue
        vs_naive = f"{s.rate / naive.server.rate:.2f}" if naive and naive.server else "-"
        mid = o.steady
        limit = "-"
        if o.limits:
            limit = f"{min(o.limits)}-{max(o.limits)} (median {statistics.median(o.limits):g})"
        rows.append(
            (
                o.variant.label,
                str(o.events),
                f"{s.occupancy:.1%}",
                f"{s.rate:.1f}",
                f"{s.ratio:.3f}",
                f"{mid.occupancy:.1%}" if mid else "-",
                f"{mid.ratio:.3f}" if mid else "-",
                f"{s.mean_waiting:.1f}",
                vs_naive,
                f"{o.rate:.1f}",
                str(o.lost),
                str(o.duplicates),
                str(o.errors),
                str(o.retries),
                f"{_pct(o.infer_ms, 0.5):.0f}",
                f"{_pct(o.infer_ms, 0.95):.0f}",
                limit,
                f"{s.cores_busy:.2f}",
                f"{o.client_cores:.2f}",
            )
        )
    print()
    print(f"summary: {_describe_model(model)}; {_cpu_line()}")
    print_rows(rows)
    print(f"load average {load_at_start} at the start, {_load()} at the end (1 minute)")
    for o in outcomes:
        for note in o.notes:
            print(f"note ({o.variant.label}): {note}")


# -- main ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, help=f"events per variant ({DEFAULT_EVENTS})")
    parser.add_argument(
        "--naive-events", type=int, help=f"events for the naive variant ({DEFAULT_NAIVE_EVENTS})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_EVENTS} events per variant, {QUICK_NAIVE_EVENTS} for the naive one",
    )
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated")
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=0.1, help="fixed seconds per request")
    parser.add_argument("--beta", type=float, default=0.004, help="seconds per running request")
    parser.add_argument("--jitter", type=float, default=0.1)
    parser.add_argument("--slow-rate", type=float, default=0.01)
    parser.add_argument("--slow-factor", type=float, default=4.0)
    parser.add_argument("--error-rate", type=float, default=0.005)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per variant")
    parser.add_argument(
        "--high-in-flight", type=int, help="flow.high_in_flight (default: the service's)"
    )
    parser.add_argument(
        "--low-in-flight", type=int, help="flow.low_in_flight (default: the service's)"
    )
    args = parser.parse_args(argv)
    n = args.events or (QUICK_EVENTS if args.quick else DEFAULT_EVENTS)
    naive_n = args.naive_events or (QUICK_NAIVE_EVENTS if args.quick else DEFAULT_NAIVE_EVENTS)
    if n < 1 or naive_n < 1:
        parser.error("--events and --naive-events must be at least 1")
    try:
        variants = [parse_variant(spec) for spec in args.variants.split(",") if spec.strip()]
        model = BatchingModel(
            slots=args.slots,
            alpha_s=args.alpha,
            beta_s=args.beta,
            jitter=args.jitter,
            slow_rate=args.slow_rate,
            slow_factor=args.slow_factor,
            error_rate=args.error_rate,
        )
    except ValueError as exc:
        parser.error(str(exc))

    flow = {
        key: value
        for key, value in (
            ("high_in_flight", args.high_in_flight),
            ("low_in_flight", args.low_in_flight),
        )
        if value is not None
    }
    run_id = uuid.uuid4().hex[:8]
    print(f"openai engine saturation bench: {_cpu_line()}, Python {sys.version.split()[0]}")
    print(f"simulated server: {_describe_model(model)}")
    load_at_start = _load()
    started = time.perf_counter()
    images = _make_images(max(n, naive_n))
    memory = InMemoryObjectStore()
    for i, sample in enumerate(images):
        memory.put(BUCKET, _object_key(i, sample), sample.data)
    outcomes: list[Outcome] = []
    with (
        tempfile.TemporaryDirectory(prefix="moderator-saturation-") as tmp,
        EmbeddedStack(buckets=(BUCKET,)) as stack,
        SimulatorProcess(model, served_model=SERVED_MODEL) as sim,
    ):
        policies = _write_policies(Path(tmp))
        print(f"embedded broker {stack.bootstrap_servers}; simulator {sim.url}")
        for variant in variants:
            count = naive_n if variant.naive else n
            topic = f"sat-in-{variant.key}-{run_id}"
            _publish_events(
                stack.bootstrap_servers, topic, f"{run_id}-{variant.key}", images[:count]
            )
            settings = _settings(
                stack.bootstrap_servers, policies, sim.url, topic, variant, run_id, flow
            )
            configure_logging(settings.log)
            print(f"\n{variant.label}: {count} events")
            began = time.perf_counter()
            outcome = run_variant(settings, variant, count, sim, memory, args.timeout)
            gc.collect()  # the service's clients sit in reference cycles: free them now
            outcomes.append(outcome)
            outcome.wall_s = time.perf_counter() - began
            s = outcome.server
            if s is not None:
                print(
                    f"  occupancy {s.occupancy:.1%}, {s.rate:.1f} items/s "
                    f"({s.ratio:.3f} x ceiling), {outcome.rate:.1f} ev/s end to end, "
                    f"lost {outcome.lost}, duplicated {outcome.duplicates}, "
                    f"retries {outcome.retries}; {outcome.wall_s:.1f} s in all, "
                    f"{outcome.join_s:.1f} s of it joining the consumer group"
                )
            ends = (
                ("start, to the 10% verdict", outcome.start),
                ("drain, from the 90%", outcome.drain),
            )
            print(
                "  "
                + "; ".join(
                    f"{what}: {e.occupancy:.1%} over {e.span_s:.1f} s" for what, e in ends if e
                )
            )
    print_table(outcomes, model, load_at_start)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    complete = all(o.lost == 0 and o.duplicates == 0 and o.audits == o.events for o in outcomes)
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
