"""The bare loop and the pipeline on the embedded mock broker and on Apache Kafka, side by side.

Run from the project root:

    .venv/bin/python bench/brokers.py [--events N] [--repeat R] [--quick]
                                      [--bootstrap-servers HOST:PORT]

Both brokers run at once: librdkafka's mock cluster inside this process (EmbeddedStack) and a
one-node Apache Kafka (KRaft) that the script starts in a JVM of its own and stops at the end
(`moderator.dev.kafka.cluster.ApacheKafka`; `--bootstrap-servers` uses a running broker
instead). The same N UploadEvents (same keys and payloads, 64x64 images, all distinct) are
written to a 4-partition input topic on each broker, and the objects sit in an
InMemoryObjectStore, so nothing but Kafka and the service's own work is measured.

Each variant is one of the two loops of bench/pipeline.py in one delivery mode:
- bare loop: consume, parse, produce one ~1 KB record per event, and end every batch of
  COMMIT_EVERY events (the service's default `kafka.commit_max_events`) the way the service's
  checkpoint does: exactly_once begin/produce/send_offsets/commit a transaction; at_least_once
  produce, flush, commit the offsets;
- pipeline: `run_service` with the fake engine at zero latency, in `kafka.delivery` mode.
exactly_once runs on the real broker only: the mock cluster cannot do it (MOCK_EOS_REASON).

Every supported variant first runs once on a small warm-up topic (the broker creates its
offsets and transaction-state topics, the JVM and the client libraries warm up), then R times
on the measured topic, the variants and the brokers interleaved so that a change in the
machine's load weighs on all of them alike; each run has its own consumer group and output
topics. A figure is the median of its R rates (events/s from the first message consumed to
the last commit, or to the reader's Nth verdict; see bench/pipeline.py), with the range when
R > 1. The ratios are computed from those medians.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from moderator.dev.samples import Sample
from moderator.dev.stack import EmbeddedStack
from moderator.errors import ConfigError, ModeratorError
from moderator.fetch.store import InMemoryObjectStore
from moderator.logs import configure_logging
from moderator.settings import Settings
from pipeline import (
    BUCKET,
    COMMIT_EVERY,
    IMAGE_SIZE,
    Phase,
    _cpu_line,
    _make_images,
    _object_key,
    _pipeline_settings,
    _publish_events,
    _write_policies,
    ceiling_topic,
    print_rows,
    run_ceiling,
    run_pipeline,
)

DEFAULT_EVENTS = 20_000
DEFAULT_REPEAT = 3
QUICK_EVENTS = 300
WARMUP_MAX = 1000
PARTITIONS = 4  # what the mock cluster gives every topic it creates
MODES = ("exactly_once", "at_least_once")
KINDS = ("bare loop", "pipeline")
MOCK_EOS_REASON = (
    "librdkafka's mock cluster cannot do exactly-once: it drops the offsets sent with a "
    "transaction and shows aborted records to read_committed readers"
)
NA_MOCK = "n/a (mock)"


@dataclass(frozen=True)
class Variant:
    kind: str  # one of KINDS
    mode: str  # one of MODES

    @property
    def name(self) -> str:
        return f"{self.kind}, {self.mode}"


VARIANTS = tuple(Variant(kind, mode) for kind in KINDS for mode in MODES)


@dataclass(frozen=True)
class Target:
    """One broker under test."""

    key: str  # "embedded" or "real"
    title: str
    bootstrap: str
    exactly_once: bool
    creates_topics: bool  # the mock cluster does not answer CreateTopics: it creates on use

    def supports(self, variant: Variant) -> bool:
        return self.exactly_once or variant.mode != "exactly_once"

    def create_topics(self, names: Sequence[str]) -> None:
        """PARTITIONS partitions each, as the mock cluster gives them, so both brokers match."""
        if not self.creates_topics or not names:
            return
        # log_level 4: librdkafka's notice about purging the admin queue on close is noise here.
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 4})
        futures = admin.create_topics(
            [NewTopic(name, PARTITIONS, 1) for name in names], operation_timeout=30
        )
        for name, future in futures.items():
            try:
                future.result(60)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                code = err.code() if isinstance(err, KafkaError) else None
                if code != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise RuntimeError(f"{self.title}: cannot create topic {name}: {err}") from exc


@dataclass
class Context:
    """What every run shares: the policies, the objects, the settings of the run."""

    policies: Path
    store: InMemoryObjectStore
    timeout_s: float


# -- runs -----------------------------------------------------------------------------------------


def run_variant(target: Target, variant: Variant, topic: str, n: int, ctx: Context) -> Phase:
    """One run of `variant` over the first n events of `topic`, in groups and topics of its own."""
    run_id = uuid.uuid4().hex[:8]
    exactly_once = variant.mode == "exactly_once"
    name = f"{variant.name} on {target.key}"
    if variant.kind == "bare loop":
        target.create_topics([ceiling_topic(run_id)])
        return run_ceiling(
            target.bootstrap, topic, n, run_id, ctx.timeout_s, exactly_once=exactly_once, name=name
        )
    label = f"{target.key}-{'eos' if exactly_once else 'alo'}"
    settings = _pipeline_settings(
        target.bootstrap, ctx.policies, topic, label, run_id, delivery=variant.mode
    )
    target.create_topics(_output_topics(settings))
    try:
        return run_pipeline(settings, name, n, ctx.store, ctx.timeout_s)
    finally:
        gc.collect()  # the service's clients sit in reference cycles: free them before the next


def run_all(
    targets: Sequence[Target], topic: str, n: int, ctx: Context, results: Results | None = None
) -> None:
    """Every variant each target supports, once, brokers alternating within a variant."""
    for variant in VARIANTS:
        for target in targets:
            if not target.supports(variant):
                continue
            phase = run_variant(target, variant, topic, n, ctx)
            _print_run(phase)
            if results is not None:
                results.add(target.key, variant, phase, n)


def _output_topics(settings: Settings) -> list[str]:
    topics = settings.kafka.topics
    return [topics.verdicts, topics.audit, topics.dlq]


def prepare_input(target: Target, topic: str, run_id: str, images: Sequence[Sample]) -> None:
    target.create_topics([topic])
    _publish_events(target.bootstrap, topic, run_id, images)


# -- report ---------------------------------------------------------------------------------------


@dataclass
class Results:
    """Rates per (target key, variant) over the repeats."""

    rates: dict[tuple[str, Variant], list[float]]
    failures: list[str]

    def add(self, key: str, variant: Variant, phase: Phase, n: int) -> None:
        self.rates.setdefault((key, variant), []).append(phase.rate)
        if phase.events < n:
            self.failures.append(phase.name)

    def median(self, key: str, variant: Variant) -> float | None:
        rates = self.rates.get((key, variant))
        return statistics.median(rates) if rates else None

    def cell(self, key: str, variant: Variant) -> str:
        rates = self.rates.get((key, variant))
        if not rates:
            return "-"
        text = f"{statistics.median(rates):,.0f} ev/s"
        if len(rates) > 1:
            text += f" ({min(rates):,.0f}-{max(rates):,.0f})"
        return text


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.3g}" if a is not None and b else "-"


def table_rows(targets: Sequence[Target], results: Results) -> list[list[str]]:
    """The header, one row per figure and one per ratio; a target lacking exactly-once says so."""
    embedded, real = targets
    header = ["figure", embedded.title, real.title, "real ÷ embedded"]
    rows = [header]
    for variant in VARIANTS:
        cells = [results.cell(t.key, variant) if t.supports(variant) else NA_MOCK for t in targets]
        ratio = (
            _ratio(results.median(real.key, variant), results.median(embedded.key, variant))
            if embedded.supports(variant)
            else NA_MOCK
        )
        rows.append([variant.name, *cells, ratio])
    for mode in MODES:
        bare, pipe = Variant("bare loop", mode), Variant("pipeline", mode)
        cells = [
            _ratio(results.median(t.key, pipe), results.median(t.key, bare))
            if t.supports(pipe)
            else NA_MOCK
            for t in targets
        ]
        rows.append([f"pipeline ÷ bare loop, {mode}", *cells, ""])
    for kind in KINDS:
        eos, alo = Variant(kind, "exactly_once"), Variant(kind, "at_least_once")
        cells = [
            _ratio(results.median(t.key, eos), results.median(t.key, alo))
            if t.supports(eos)
            else NA_MOCK
            for t in targets
        ]
        rows.append([f"exactly_once ÷ at_least_once, {kind}", *cells, ""])
    return rows


def _print_run(phase: Phase) -> None:
    print(
        f"  {phase.name}: {phase.events} events, {phase.rate:,.0f} ev/s "
        f"({phase.active_s:.2f} s from the first message, {phase.wall_s:.2f} s wall), "
        f"{phase.commits} commits"
        + (f", duplicates {phase.duplicates}" if phase.duplicates else "")
        + (f", verdicts with error {phase.verdict_errors}" if phase.verdict_errors else "")
    )
    for note in phase.notes:
        print(f"    note: {note}")


# -- main -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def real_broker(bootstrap: str | None) -> Iterator[tuple[str, str]]:
    """(bootstrap servers, title): the broker at `bootstrap`, or a one-node ApacheKafka started
    for this run and stopped after it."""
    if bootstrap is not None:
        yield bootstrap, f"real ({bootstrap})"
        return
    from moderator.dev.kafka.cluster import KAFKA_VERSION, ApacheKafka

    started = time.perf_counter()
    with ApacheKafka() as kafka:
        print(
            f"started Apache Kafka {KAFKA_VERSION} (one KRaft node) at {kafka.bootstrap_servers} "
            f"in {time.perf_counter() - started:.1f} s"
        )
        yield kafka.bootstrap_servers, f"real (Kafka {KAFKA_VERSION})"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, help=f"events per run (default {DEFAULT_EVENTS})")
    parser.add_argument(
        "--repeat", type=int, help=f"runs per variant, median reported (default {DEFAULT_REPEAT})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {QUICK_EVENTS} events, one repeat, no warm-up (flags still apply)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        help=f"warm-up events per variant, 0 for none (default N/10, at most {WARMUP_MAX})",
    )
    parser.add_argument(
        "--bootstrap-servers", help="use this running broker as the real one, not a started one"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds each run may take")
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = QUICK_EVENTS if args.quick else DEFAULT_EVENTS
    if args.repeat is None:
        args.repeat = 1 if args.quick else DEFAULT_REPEAT
    if args.warmup is None:
        args.warmup = 0 if args.quick else max(1, min(WARMUP_MAX, args.events // 10))
    if args.events < 1:
        parser.error("--events must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not 0 <= args.warmup <= args.events:
        parser.error("--warmup must be between 0 and --events")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    n: int = args.events
    warm: int = args.warmup
    print(
        f"moderator broker bench: {n} events per run, median of {args.repeat}, warm-up {warm} "
        f"events, checkpoint every {COMMIT_EVERY}, {_cpu_line()}, Python {sys.version.split()[0]}"
    )
    started = time.perf_counter()
    images = _make_images(n)
    store = InMemoryObjectStore()
    for i, sample in enumerate(images):
        store.put(BUCKET, _object_key(i, sample), sample.data)
    tag = uuid.uuid4().hex[:8]
    topic, warm_topic = f"bench-brokers-{tag}", f"bench-brokers-warm-{tag}"
    results = Results({}, [])
    try:
        with (
            tempfile.TemporaryDirectory(prefix="moderator-bench-") as tmp,
            EmbeddedStack(buckets=(BUCKET,)) as stack,
            real_broker(args.bootstrap_servers) as (real_bootstrap, real_title),
        ):
            ctx = Context(_write_policies(Path(tmp)), store, args.timeout)
            targets = (
                Target("embedded", "embedded (mock)", stack.bootstrap_servers, False, False),
                Target("real", real_title, real_bootstrap, True, True),
            )
            configure_logging(
                _pipeline_settings(real_bootstrap, ctx.policies, topic, "log", tag).log
            )
            for target in targets:
                prepare_input(target, topic, tag, images)
                if warm:
                    prepare_input(target, warm_topic, f"{tag}-warm", images[:warm])
            size = f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}"
            print(f"published {n} UploadEvents ({size} images) to {topic} on each broker")
            if warm:
                print("\nwarm-up")
                run_all(targets, warm_topic, warm, ctx)
            for repeat in range(args.repeat):
                print(f"\nrun {repeat + 1} of {args.repeat}")
                run_all(targets, topic, n, ctx, results)
    except ConfigError as exc:  # e.g. no Java or Maven for the real broker
        print(f"broker bench: {exc}", file=sys.stderr)
        return 2
    except (ModeratorError, RuntimeError, KafkaException) as exc:
        print(f"broker bench failed: {exc}", file=sys.stderr)
        return 1
    print(f"\nsummary: {n} events per run, median of {args.repeat} (min-max), {_cpu_line()}")
    print_rows(table_rows(targets, results))
    print(f"\n{NA_MOCK}: {MOCK_EOS_REASON}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if results.failures:
        print(f"incomplete runs: {', '.join(results.failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
