"""`moderator` entry point: argument parsing, settings, exit codes (0 ok, 1 runtime, 2 usage)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from moderator import __version__, heap
from moderator.cli.audit_admin import add_admin_parsers  # cheap: commands import on use
from moderator.cli.audit_dsa import add_dsa_parser
from moderator.cli.audit_query import add_query_parser
from moderator.cli.dataset import add_dataset_parser
from moderator.cli.devstack import add_dev_stack_parser
from moderator.cli.eval import add_eval_parser
from moderator.cli.explain import add_explain_parser
from moderator.cli.lines import error_line
from moderator.cli.parsers import (
    add_audit_parser,
    add_demo_parser,
    add_model_parser,
    add_policy_parser,
    add_run_parser,
    add_scan_parser,
)
from moderator.cli.replay import add_replay_parser
from moderator.cli.signals import install_stop_handlers
from moderator.cli.style import ENGINES, HelpFormatter, Parser, examples
from moderator.cli.topics import add_topics_parser
from moderator.cli.train import add_train_parser
from moderator.dev.tiny.checkpoint import (
    ARCHES as TINY_ARCHES,  # cheap: torch is imported on use only
)
from moderator.errors import ConfigError
from moderator.masking import mask_passwords

if TYPE_CHECKING:
    from moderator.settings import Settings

__all__ = ["ENGINES", "build_parser", "main"]

DESCRIPTION = (
    "Streaming content moderation for image uploads: consumes upload events from Kafka, "
    "fetches the images from S3, judges them with a vision safety model and publishes verdicts "
    "and audit records exactly once. Every command has --help with examples. Exit codes: 0 "
    "success, 1 runtime failure, 2 usage or configuration error (one line on stderr; --debug "
    "adds the traceback). docs/cli.md describes the conventions."
)


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree (cheap: no command's own imports)."""
    parser = Parser(
        prog="moderator",
        description=DESCRIPTION,
        epilog=examples(
            "moderator demo --engine fake",
            "moderator run --config settings.yaml",
            "moderator scan ./photos --engine fake --format csv --output verdicts.csv",
            "moderator policy validate policies",
            "moderator explain EVENT_ID",
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"moderator {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_parser(sub)
    add_demo_parser(sub)
    add_dev_stack_parser(sub)
    add_scan_parser(sub)
    add_replay_parser(sub)
    add_explain_parser(sub)
    add_eval_parser(sub)
    add_dataset_parser(sub)
    add_train_parser(sub)
    add_policy_parser(sub)
    audit_sub = add_audit_parser(sub)
    add_query_parser(audit_sub)
    add_admin_parsers(audit_sub)
    add_dsa_parser(audit_sub)
    add_topics_parser(sub)
    add_model_parser(sub, TINY_ARCHES)
    return parser


_parser = build_parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "engine.kind": getattr(args, "engine", None),
        "engine.model": getattr(args, "model", None),
        "policies.dir": getattr(args, "policies", None),
        "http.port": getattr(args, "http_port", None),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code. A failure is one line on stderr (URL passwords masked):
    2 for configuration and usage errors, 1 for the rest. `--debug` adds the traceback before
    that line and changes no exit code."""
    from moderator.logs import route_logs_to_stderr

    route_logs_to_stderr()  # until a command configures logging: stdout is for its data
    args = _parser().parse_args(argv)
    for line in environment_warnings(args, os.environ):
        print(f"moderator: warning: {line}", file=sys.stderr)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`moderator policy render T | head`): not our failure, and the
        # interpreter must not complain again while flushing stdout on exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        if args.debug:
            trace = "".join(traceback.format_exception(exc))
            sys.stderr.write(mask_passwords(trace))
        print(f"moderator: {error_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


def environment_warnings(args: argparse.Namespace, environ: Mapping[str, str]) -> list[str]:
    """The `MODERATOR_*` variables no setting reads, one line each. None for a `run --workers`
    worker: its supervisor, started with the same environment, has said it once."""
    from moderator.settings import Settings
    from moderator.settings_errors import unknown_environment

    if getattr(args, "worker_index", None) is not None:
        return []
    return unknown_environment(Settings, environ)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "dev-stack":
        from moderator.cli.devstack import run_dev_stack

        return run_dev_stack(args)
    if args.command == "demo":
        from moderator.cli.demo import cmd_demo

        return cmd_demo(args.events, args.config, _overrides(args))
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "scan":
        from moderator.cli.scan import cmd_scan

        return cmd_scan(
            args.target,
            tenant=args.tenant,
            output=args.output,
            output_format=args.format,
            config=args.config,
            overrides=_overrides(args),
            debug=args.debug,
        )
    if args.command == "replay":
        from moderator.cli.replay import cmd_replay

        return cmd_replay(args)
    if args.command == "dataset":
        from moderator.cli.dataset import cmd_dataset

        return cmd_dataset(args)
    if args.command == "eval":
        from moderator.cli.eval import cmd_eval

        return cmd_eval(args)
    if args.command == "train":
        from moderator.cli.train import cmd_train

        return cmd_train(args)
    if args.command == "explain":
        from moderator.cli.explain import cmd_explain

        return cmd_explain(args)
    if args.command == "policy":
        return _cmd_policy(args)
    if args.command == "audit":
        return _cmd_audit(args)
    if args.command == "topics":
        from moderator.cli.topics import cmd_topics_create

        return cmd_topics_create(args.config, dry_run=args.dry_run, debug=args.debug)
    if args.command == "model":
        from moderator.cli.model import cmd_make_tiny

        return cmd_make_tiny(args.directory, args.arch, args.seed)
    raise ConfigError(f"unknown command {args.command}")


def _cmd_policy(args: argparse.Namespace) -> int:
    from moderator.cli.policy import cmd_diff, cmd_render, cmd_validate

    if args.policy_command == "validate":
        return cmd_validate(args.directory, args.config, engine=args.engine, policies=args.policies)
    if args.policy_command == "render":
        return cmd_render(
            args.tenant,
            surface=args.surface,
            policies=args.policies,
            config=args.config,
            output_format=args.format,
        )
    return cmd_diff(args.old, args.new, args.config)


def _cmd_audit(args: argparse.Namespace) -> int:
    if args.audit_command == "sink":
        from moderator.cli.audit_sink import cmd_audit_sink

        return cmd_audit_sink(args.config, _overrides(args))
    if args.audit_command == "query":
        from moderator.cli.audit_query import cmd_query

        return cmd_query(args)
    if args.audit_command in ("verify", "retention", "serve", "hash-token"):
        from moderator.cli import audit_admin, audit_serve

        command = {
            "verify": audit_admin.cmd_verify,
            "retention": audit_admin.cmd_retention,
            "serve": audit_serve.cmd_serve,
            "hash-token": audit_serve.cmd_hash_token,
        }[args.audit_command]
        return command(args)
    if args.audit_command == "export-dsa":
        return _cmd_export_dsa(args)
    raise ConfigError(f"unknown audit command {args.audit_command}")


def _cmd_export_dsa(args: argparse.Namespace) -> int:
    from moderator.cli.audit_dsa import cmd_export_dsa
    from moderator.cli.audit_query import filter_values
    from moderator.cli.style import policies_left_unset
    from moderator.settings import load_settings

    settings = load_settings(args.config, {"policies.dir": args.policies})
    # Where `moderator demo` ran: policies.dir left at its default, and no such folder there.
    unset = policies_left_unset(args, settings)
    return cmd_export_dsa(
        settings,
        demo_policies=unset and not settings.policies.dir.is_dir(),
        filters=filter_values(args),
        output=args.output,
        salt_env=args.salt_env,
        territorial_scope=args.territorial_scope,
        terms_url=args.terms_url,
        ground_text=args.ground_text,
        content_language=args.content_language,
        include_smoke_test=args.include_smoke_test,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    if args.check:
        from moderator.cli.check import cmd_check

        return cmd_check(args.config, _overrides(args))
    from moderator.cli import workers
    from moderator.engine.factory import check_model_flag
    from moderator.ingest.startup import probe_cluster
    from moderator.logs import configure_logging
    from moderator.service import run_service
    from moderator.settings import load_settings

    settings = load_settings(args.config, _overrides(args))
    check_model_flag(settings.engine.kind, args.model)
    if args.worker_index is not None:  # started by a supervisor, which did the checks below
        return _run_worker(workers.worker_settings(settings, args.worker_index))
    workers.check_workers(settings, args.workers)
    if args.workers > 1 and args.with_audit_sink:
        raise ConfigError("--with-audit-sink runs in one process: not with --workers")
    configure_logging(settings.log)
    from moderator.cli.preflight import check_settings

    # A missing checkpoint or a policy file that fails: before the broker is contacted, and
    # before a consumer (the audit sink's, a worker's) joins a group only to leave it.
    check_settings(settings)
    # No broker within kafka.startup_timeout_s: one line and exit 2, before any client retries.
    probe_cluster(settings.kafka, client_id=f"moderator-probe-{settings.instance_id}")
    if settings.kafka.create_topics:
        from moderator.cli.topics import ensure_at_startup

        ensure_at_startup(settings)
    stop = install_stop_handlers()
    if args.workers > 1:
        return workers.supervise(
            settings,
            args.workers,
            stop,
            lambda k: workers.worker_argv(
                k,
                config=args.config,
                engine=args.engine,
                model=args.model,
                policies=args.policies,
                http_port=args.http_port,
                debug=args.debug,
            ),
        )
    if args.with_audit_sink:
        from moderator.audit.sink.wiring import run_with_audit_sink
        from moderator.obs.http import serving

        with serving(settings.http) as shared:  # one endpoint for the consumer and the sink
            run_with_audit_sink(
                settings,
                stop,
                lambda: run_service(settings, stop, telemetry=shared, on_built=heap.settled),
                telemetry=shared,
            )
    else:
        run_service(settings, stop, on_built=heap.settled)
    return 0


def _run_worker(settings: Settings) -> int:
    """One worker of `run --workers N`: the service under its own instance id, stopping on
    SIGTERM/SIGINT or when its supervisor is gone."""

    from moderator.cli.preflight import check_engine_files
    from moderator.cli.workers import watch_parent
    from moderator.logs import bind_process_fields, configure_logging
    from moderator.service import run_service

    configure_logging(settings.log)
    bind_process_fields(worker=settings.instance_id)  # every thread's lines, the engine's too
    check_engine_files(settings.engine)
    stop = install_stop_handlers()
    watch_parent(stop)
    run_service(settings, stop, on_built=heap.settled)
    return 0


NATIVE_POOLS = ("torch", "onnxruntime", "xgrammar")
"""Libraries whose native thread pools may still run while the interpreter finalises: a
process that loaded one can abort after its work is done (`terminate called without an active
exception`, exit 134 instead of the command's code), seen about once in ten `scan` runs with
the transformers engine."""


def entry() -> None:
    """The `moderator` console script: `main`, then exit with its code. After a command that
    loaded a library of NATIVE_POOLS, the standard streams are flushed and the process ends
    without finalising the interpreter (`os._exit`): every command closes its own files,
    clients and threads before `main` returns, so nothing is left for finalisation to do."""
    code = main()
    if not any(name in sys.modules for name in NATIVE_POOLS):
        raise SystemExit(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
