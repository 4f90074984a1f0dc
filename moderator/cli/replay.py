"""`moderator replay`: re-evaluate a range of `uploads` under other policies or another model.

A run finds its offset ranges, writes its plan (`run.json`) into the report directory, replays
through the same loop and pipeline as `moderator run` (its own group and transactional id,
output to the replay topic only), then reads its verdicts back, joins them with the originals
and writes the diff report. Exit 0 when the run finished and the report is written; 1 when it
stopped early (resume it with `--resume RUN_ID`) or failed; 2 for usage or configuration errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moderator.cli.style import (
    TENANT_METAVAR,
    add_command,
    add_config_flag,
    add_engine_flags,
    add_policies_flag,
    examples,
)

DESCRIPTION = (
    "Re-evaluate past uploads under another policy directory and/or engine/model and report "
    "what would change. The range is a time range (--from/--to, ISO 8601), explicit offsets "
    "(--offsets P:START-END,...; END exclusive) or, without either, the whole topic up to its "
    "end now. Replayed verdicts go to the replay topic only (kafka.topics.replay), never to the "
    "live verdicts or audit topics. The report directory gets run.json (the plan), report.json, "
    "changed.jsonl, report.md and report.html. --policies, --engine and --model say what to "
    "replay under (default: the live settings); the engine's files and the policies are "
    "checked before Kafka is contacted. The report's policy diff compares with --live-policies "
    "DIR (default: policies.dir), e.g. the directory from before a rollout. Exit 0 when "
    "finished, 1 when stopped before the end (resume with --resume RUN_ID --report DIR) or on "
    "a runtime failure, 2 on bad flags or settings."
)
EXAMPLES = examples(
    "moderator replay --from 2026-11-01T00:00:00Z --to 2026-11-02T00:00:00Z "
    "--policies policies-next",
    "moderator replay --offsets 0:100-200,1:0-50 --engine fake --report replay-test",
    "moderator replay --tenant acme --sample 0.1 --dry-run",
    "moderator replay --resume RUN_ID --report replay-RUN_ID",
    "moderator replay --from 2026-11-01 --to 2026-11-02 --live-policies policies-before",
)


def add_replay_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "replay",
        help="re-evaluate past uploads under a new policy or model",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    start = "range start (inclusive), e.g. 2026-11-29T02:00:00Z; a date alone is 00:00 UTC"
    start += ", a time without an offset UTC"
    p.add_argument("--from", dest="from_", metavar="TIME", help=start)
    p.add_argument("--to", metavar="TIME", help="range end (exclusive; default: now), as --from")
    p.add_argument("--offsets", metavar="P:START-END,...", help="explicit offsets per partition")
    p.add_argument(
        "--tenant",
        action="append",
        metavar=TENANT_METAVAR,
        help="replay only this tenant (repeatable)",
    )
    p.add_argument("--sample", metavar="RATE", help="replay this fraction of events, e.g. 0.1")
    add_policies_flag(p)
    p.add_argument(
        "--live-policies",
        type=Path,
        metavar="DIR",
        help="the policy directory the report compares with (default: policies.dir)",
    )
    add_engine_flags(p)
    p.add_argument(
        "--output-topic", metavar="T", help="where replayed verdicts go (kafka.topics.replay)"
    )
    p.add_argument(
        "--allow-live-output",
        action="store_true",
        help="allow --output-topic to name the live verdicts or audit topic",
    )
    p.add_argument(
        "--report", type=Path, metavar="DIR", help="report directory (default: replay-RUN_ID)"
    )
    p.add_argument("--rate", type=float, metavar="N", help="at most N events per second")
    p.add_argument(
        "--max-in-flight", type=int, metavar="N", help="events in progress at most (flow cap)"
    )
    p.add_argument(
        "--reuse-assessments",
        action="store_true",
        help="re-decide from the original assessment when the model is the same (no engine call)",
    )
    p.add_argument(
        "--originals",
        choices=("auto", "audit", "topic"),
        metavar="auto|audit|topic",
        default="auto",
        help="where original verdicts come from: the audit store (audit.url), the verdicts "
        "topic, or auto (the audit store when its database exists)",
    )
    p.add_argument("--dry-run", action="store_true", help="count the range's events and exit")
    p.add_argument("--resume", metavar="RUN_ID", help="continue a run from its report directory")
    add_config_flag(p)


def cmd_replay(args: argparse.Namespace) -> int:
    from moderator.cli.replay_resume import resume_config
    from moderator.engine.factory import check_model_flag
    from moderator.errors import ConfigError
    from moderator.logs import configure_logging
    from moderator.settings import load_settings

    overrides = {
        "engine.kind": args.engine,
        "engine.model": args.model,
        "policies.dir": args.policies,
    }
    if args.resume is not None:
        args.config = resume_config(args)
    settings = load_settings(args.config, overrides)
    live = load_settings(args.config, {})
    level = "debug" if args.debug else settings.log.level
    # `info` (the service default) becomes `warning`: the progress line owns stderr.
    configure_logging(
        settings.log.model_copy(update={"level": "warning" if level == "info" else level})
    )
    if args.rate is not None and not args.rate > 0:
        raise ConfigError(f"--rate: must be above 0 events per second, got {args.rate:g}")
    if args.max_in_flight is not None and not 2 <= args.max_in_flight <= 100_000:
        raise ConfigError(
            f"--max-in-flight: must be between 2 and 100000, got {args.max_in_flight}"
        )
    from moderator.cli.preflight import check_directory, check_settings

    if args.live_policies is not None:
        check_directory("--live-policies", args.live_policies)
    if args.resume is not None:
        from moderator.cli.replay_resume import check_unchanged, plan_overrides, resumed

        plan, directory = resumed(args)
        resumed_settings = load_settings(args.config, plan_overrides(plan))
        check_settings(resumed_settings, engine=not args.dry_run)  # a dry run needs no model
        # A dry run of a resume checks it too: it is how one asks whether a resume would run.
        live_dir = _live_dir(plan.live_policies_dir, live)
        given = args.live_policies is not None
        check_unchanged(plan, resumed_settings, live_dir, live_given=given)
        _reach(settings)
    else:
        check_model_flag(settings.engine.kind, args.model)  # a resume names its flags to drop
        # before any Kafka lookup or file is written; a dry run needs no model
        check_settings(settings, engine=not args.dry_run)
        plan, directory = _new_plan(args, settings, live)
    if args.dry_run:
        return _dry_run(settings, plan)
    from moderator.replay.plan import save_plan
    from moderator.words import counted

    save_plan(plan, directory)
    print(
        f"replay {plan.run_id}: {plan.range_text}, {counted(plan.events_upper_bound, 'offset')} "
        f"in {counted(len(plan.ranges), 'partition')}; report in {directory}",
        file=sys.stderr,
    )
    return _run(args, settings, live, plan, directory)


def _reach(settings: Any) -> None:
    """One line naming the servers and the setting when no broker answers within
    kafka.startup_timeout_s; a runtime failure here (exit 1), as docs/replay.md has it."""
    from moderator.errors import ConfigError, ModeratorError
    from moderator.ingest.startup import probe_cluster

    try:
        probe_cluster(settings.kafka, client_id=f"moderator-replay-{settings.instance_id}")
    except ConfigError as exc:
        raise ModeratorError(str(exc)) from exc


def _live_dir(given: str | None, live: Any) -> Path:
    from moderator.cli.replay_policies import live_policies

    return live_policies(given, live.policies.dir)[0]


def _new_plan(args: argparse.Namespace, settings: Any, live: Any) -> tuple[Any, Path]:
    from moderator.errors import ConfigError
    from moderator.ingest.kafka import make_consumer
    from moderator.replay.pinned import pinned_settings, policy_versions
    from moderator.replay.plan import RunPlan, check_new_report
    from moderator.replay.ranges import find_ranges, output_ends
    from moderator.replay.request import (
        EventFilter,
        check_output_topic,
        new_run_id,
        parse_offsets,
        parse_sample,
        parse_tenants,
        parse_window,
        range_text,
    )

    # `is not None`, not truth: an empty `--offsets ""` must fail, not replay the whole topic.
    if args.offsets is not None and (args.from_ is not None or args.to is not None):
        raise ConfigError("--offsets: give either --offsets or --from/--to, not both")
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    from_ms, to_ms = parse_window(args.from_, args.to, now_ms)
    offsets = parse_offsets(args.offsets) if args.offsets is not None else None
    sample = parse_sample(args.sample) if args.sample is not None else 1.0
    tenants = parse_tenants(args.tenant)
    topics = settings.kafka.topics
    output = check_output_topic(
        topics.replay if args.output_topic is None else args.output_topic,
        uploads=topics.uploads,
        live=(topics.verdicts, topics.audit, topics.dlq),
        allow_live=args.allow_live_output,
    )
    run_id = new_run_id(now)
    directory = args.report or Path(f"replay-{run_id}")
    if not args.dry_run:  # a dry run writes nothing
        check_new_report(directory)
    _reach(settings)
    probe = make_consumer(_group(settings, run_id))
    try:
        timeout = settings.kafka.startup_timeout_s
        ranges, how, notes = find_ranges(
            probe,
            topics.uploads,
            offsets=offsets,
            from_ms=from_ms,
            to_ms=to_ms,
            now_ms=now_ms,
            timeout_s=timeout,
        )
        for note in notes:
            print(f"moderator: note: {note}", file=sys.stderr)
        starts = output_ends(probe, output, timeout) if not args.dry_run else {}
    finally:
        probe.close()
    plan = RunPlan(
        run_id=run_id,
        created_at=now.isoformat().replace("+00:00", "Z"),
        uploads_topic=topics.uploads,
        output_topic=output,
        ranges=ranges,
        event_filter=EventFilter(tenants, from_ms, to_ms, sample),
        range_text=range_text(args.offsets, args.from_, args.to, now_ms),
        lookup=how,
        policies_dir=str(settings.policies.dir.resolve()),
        live_policies_dir=str(args.live_policies.resolve()) if args.live_policies else None,
        engine=settings.engine.kind,
        model=settings.engine.model,
        reuse_assessments=args.reuse_assessments,
        rate=args.rate,
        output_start=starts,
        config=str(Path(args.config).resolve()) if args.config is not None else None,
        pinned=pinned_settings(settings),
        policy_versions=policy_versions(settings.policies.dir, settings.tenancy),
    )
    live_dir = _live_dir(plan.live_policies_dir, live)
    if live_dir.resolve() != settings.policies.dir.resolve():
        versions = policy_versions(live_dir, live.tenancy)
        plan = dataclasses.replace(plan, live_policy_versions=versions)
    return plan, directory


def _group(settings: Any, run_id: str) -> Any:
    """The settings with the run's own consumer group (lookups and reads never use the live
    group: nothing of the live service's offsets moves)."""
    kafka = settings.kafka.model_copy(
        update={"group_id": f"{settings.kafka.group_id}.replay.{run_id}"}
    )
    return settings.model_copy(update={"kafka": kafka})


def _dry_run(settings: Any, plan: Any) -> int:
    from moderator.events.s3notify import TenantRule
    from moderator.ingest.kafka import make_consumer
    from moderator.replay.census import take_census
    from moderator.replay.tenants import absent_tenants, gap_warning, uncovered

    consumer = make_consumer(_group(settings, plan.run_id))
    try:
        rule = TenantRule(
            settings.tenancy.rule,
            dict(settings.tenancy.bucket_map),
            frozenset(settings.tenancy.content_events),
        )
        census = take_census(consumer, plan, rule)
    finally:
        consumer.close()
    how = "" if plan.lookup in plan.range_text else f" ({plan.lookup})"
    print(f"range: {plan.range_text}{how} on {plan.uploads_topic}")
    for line in census.lines():
        print(line)
    for tenant in uncovered(settings, census.tenants):
        print(f"moderator: warning: {gap_warning(tenant, plan.policies_dir)}", file=sys.stderr)
    for line in absent_tenants(plan.event_filter.tenants, census.tenants, census.in_range):
        print(f"moderator: warning: {line}", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace, settings: Any, live: Any, plan: Any, directory: Path) -> int:
    from moderator import heap
    from moderator.cli.signals import install_stop_handlers
    from moderator.ingest.kafka import make_consumer
    from moderator.replay.progress import ReplayProgress
    from moderator.replay.runner import collect_results, replay_overrides, run_plan
    from moderator.replay.tenants import PolicyGaps
    from moderator.settings import load_settings

    replay_settings = load_settings(
        args.config, replay_overrides(settings, plan, args.max_in_flight)
    )
    originals = _originals(args.originals, settings)
    stop = install_stop_handlers()
    progress = ReplayProgress(sys.stderr, plan.events_upper_bound)
    gaps = PolicyGaps(plan.policies_dir, lambda line: progress.note(f"moderator: warning: {line}"))
    started = datetime.now(UTC)
    outcome = run_plan(
        replay_settings,
        plan,
        stop,
        originals=originals,
        on_checkpoint=progress.advance,
        on_resumed=progress.resumed,
        on_missing_policy=gaps.missing,
        on_built=heap.settled,
    )
    progress.finish(complete=outcome.completed)
    if not outcome.completed:
        config = f" --config {args.config}" if args.config is not None else ""
        print(
            f"replay {plan.run_id} stopped before the end of its range; continue it with: "
            f"moderator replay --resume {plan.run_id} --report {directory}{config}",
            file=sys.stderr,
        )
        return 1
    reader = make_consumer(_group(settings, plan.run_id))
    try:
        results = collect_results(reader, plan, timeout_s=settings.kafka.startup_timeout_s)
    finally:
        reader.close()
    from moderator.cli.replay_policies import live_policies, policy_diff
    from moderator.replay.summary import run_header, write_summary
    from moderator.replay.tenants import absent_tenants

    live_dir, live_from = live_policies(plan.live_policies_dir, live.policies.dir)
    header = run_header(
        plan,
        originals,
        live_policies=str(live_dir),
        live_policies_from=live_from,
        policy_diff=policy_diff(live_dir, Path(plan.policies_dir), live.tenancy),
        started_at=started.isoformat().replace("+00:00", "Z"),
        replayed_here={
            "kept": outcome.replay.kept,
            "filtered": outcome.replay.filtered,
            "malformed_skipped": outcome.malformed,
        },
        dropped_outputs=outcome.dropped,
        resumed_from={str(p): o for p, o in sorted(outcome.resumed_from.items())},
    )
    report = write_summary(plan, results, originals, directory, header=header)
    for line in absent_tenants(plan.event_filter.tenants, report.by_tenant):
        print(f"moderator: warning: {line}", file=sys.stderr)
    return 0


def _originals(choice: str, settings: Any) -> Any:
    from moderator.audit.errors import AuditUnavailable
    from moderator.cli.audit_query import open_existing_store
    from moderator.ingest.kafka import make_consumer
    from moderator.replay.originals import AuditOriginals, TopicOriginals

    if choice in ("auto", "audit"):
        try:
            return AuditOriginals(open_existing_store(settings.audit.url))
        except AuditUnavailable:
            if choice == "audit":
                raise
    consumer = make_consumer(_group(settings, "originals"))
    try:
        return TopicOriginals.read(
            consumer, settings.kafka.topics.verdicts, timeout_s=settings.kafka.startup_timeout_s
        )
    finally:
        consumer.close()
