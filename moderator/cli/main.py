"""`moderator` entry point: argument parsing, settings, exit codes (0 ok, 1 runtime, 2 usage)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from moderator import __version__
from moderator.cli.audit_admin import add_admin_parsers  # cheap: commands import on use
from moderator.cli.audit_dsa import add_dsa_parser
from moderator.cli.audit_query import add_query_parser
from moderator.cli.devstack import add_dev_stack_parser
from moderator.cli.lines import error_line
from moderator.cli.replay import add_replay_parser
from moderator.cli.signals import install_stop_handlers
from moderator.cli.topics import add_topics_parser
from moderator.dev.tiny.checkpoint import (
    ARCHES as TINY_ARCHES,  # cheap: torch is imported on use only
)
from moderator.errors import ConfigError
from moderator.masking import mask_passwords

ENGINES = ("nudenet", "transformers", "lmdeploy", "openai", "fake")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="moderator", description="Streaming content moderation for image uploads."
    )
    parser.add_argument("--version", action="version", version=f"moderator {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="consume uploads and publish verdicts until SIGTERM/SIGINT")
    _engine_flags(run)
    run.add_argument("--config", type=Path, help="YAML settings file")
    run.add_argument("--policies", type=Path, help="policy directory (policies.dir)")
    run.add_argument(
        "--with-audit-sink",
        action="store_true",
        help="also run the audit sink in this process (single-process deployments)",
    )
    run.add_argument(
        "--check",
        action="store_true",
        help="check the settings, Kafka, S3, the engine and the policies, print a table and "
        "exit: 0 when all pass, 2 when any fails (consumes and produces nothing)",
    )
    _http_port_flag(run)

    demo = sub.add_parser("demo", help="run everything embedded on sample images, print verdicts")
    _engine_flags(demo)
    demo.add_argument("--events", type=int, default=24, help="sample uploads to moderate")
    demo.add_argument("--config", type=Path, help="YAML settings file")
    demo.add_argument("--policies", type=Path, help="policy directory (default: bundled)")

    add_dev_stack_parser(sub)

    scan = sub.add_parser(
        "scan",
        help="classify a local folder or an S3 prefix offline; one verdict JSON line per object",
        description=(
            "Classify every regular file under PATH (walked recursively in name order; hidden "
            "files and folders, names starting with '.', are skipped), a single file, or every "
            "object under s3://bucket/prefix, with a tenant's policy. Writes one Verdict v1 JSON "
            "object per line; progress goes to stderr. Exit 0 when every object got a verdict "
            "(error verdicts included), 1 on a runtime failure, 2 on a usage or config error."
        ),
    )
    scan.add_argument("target", metavar="PATH|s3://bucket/prefix", help="what to scan")
    scan.add_argument(
        "--tenant",
        metavar="T",
        help="tenant whose policy decides (default: 'default'); "
        "a tenant without a policy file gets the default policy",
    )
    _engine_flags(scan)
    scan.add_argument(
        "--output", type=Path, metavar="FILE", help="write verdict lines to FILE (default: stdout)"
    )
    scan.add_argument("--config", type=Path, metavar="FILE", help="YAML settings file")
    scan.add_argument(
        "--policies", type=Path, metavar="DIR", help="policy directory (policies.dir)"
    )

    add_replay_parser(sub, ENGINES)
    from moderator.cli.explain import add_explain_parser  # cheap: the command imports on use

    add_explain_parser(sub)
    _policy_parser(sub)
    _audit_parser(sub)
    add_topics_parser(sub)

    model = sub.add_parser("model", help="model checkpoint tools")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    tiny = model_sub.add_parser(
        "make-tiny", help="write a tiny random-weight checkpoint for smoke tests (no downloads)"
    )
    tiny.add_argument("directory", type=Path, help="where to write the checkpoint")
    tiny.add_argument(
        "--arch", choices=TINY_ARCHES, default=TINY_ARCHES[0], help="model architecture"
    )
    tiny.add_argument("--seed", type=int, default=0, help="weight seed (same seed, same bytes)")
    return parser


def _policy_parser(sub: Any) -> None:
    policy = sub.add_parser("policy", help="check, show and compare tenant policies")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    config_help = "YAML settings file (tenancy, policies.dir, policies.default_for_unknown)"
    validate = policy_sub.add_parser(
        "validate",
        help="load every file and compile every tenant and surface; list problems",
        description=(
            "Load every *.yaml and *.yml in DIR and compile each tenant for its default surface "
            "and every surface it declares. Prints `tenant surface version` per policy and exits "
            "0, or prints every problem as `path:line: reason` on stderr and exits 2. With "
            "--engine E, also prints a warning line on stderr for each tenant whose policy acts "
            "on categories engine E can never raise (exit code still 0)."
        ),
    )
    validate.add_argument(
        "directory",
        nargs="?",
        type=Path,
        metavar="DIR",
        help="policy directory (default: policies.dir)",
    )
    validate.add_argument("--config", type=Path, metavar="FILE", help=config_help)
    validate.add_argument(
        "--engine",
        choices=ENGINES,
        help="also warn, once per tenant, about categories the policy acts on that this "
        "engine.kind can never raise (a warning: the exit code stays 0)",
    )
    render = policy_sub.add_parser(
        "render", help="print a tenant's compiled prompt and decision table"
    )
    render.add_argument("tenant", metavar="TENANT", help="tenant id (its file name without .yaml)")
    render.add_argument("--surface", metavar="S", help="context.surface (default: none)")
    render.add_argument(
        "--policies", type=Path, metavar="DIR", help="policy directory (policies.dir)"
    )
    render.add_argument("--config", type=Path, metavar="FILE", help=config_help)
    render.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default: text)"
    )
    diff = policy_sub.add_parser(
        "diff", help="compare two policy directories tenant by tenant and surface by surface"
    )
    diff.add_argument("old", type=Path, metavar="OLD_DIR")
    diff.add_argument("new", type=Path, metavar="NEW_DIR")
    diff.add_argument("--config", type=Path, metavar="FILE", help=config_help)


def _audit_parser(sub: Any) -> Any:
    """The `audit` group; returns its subparsers so more subcommands can be added."""
    audit = sub.add_parser("audit", help="the audit store: sink, queries, verification, exports")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    sink = audit_sub.add_parser(
        "sink",
        help="write the audit topic into the audit store until SIGTERM/SIGINT",
        description=(
            "Consume kafka.topics.audit (group audit.sink_group_id, default "
            "{kafka.group_id}-audit-sink) into the store at audit.url in batches of "
            "audit.batch_size, committing offsets after each database commit; export chain-head "
            "anchors every audit.anchor_every_s to the configured destinations. Exit 0 on "
            "SIGTERM/SIGINT, 1 on a runtime failure, 2 on a configuration error."
        ),
    )
    sink.add_argument("--config", type=Path, metavar="FILE", help="YAML settings file")
    _http_port_flag(sink)
    add_query_parser(audit_sub)
    add_admin_parsers(audit_sub)
    add_dsa_parser(audit_sub)
    return audit_sub


def _engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=ENGINES, help="engine.kind")
    p.add_argument("--model", help="engine.model (checkpoint path or served model name)")


def _http_port_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--http-port",
        type=int,
        metavar="N",
        help="serve /metrics, /healthz and /readyz on port N (http.port, default 9400; 0 = off)",
    )


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


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), pointing at --help for the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
            config=args.config,
            overrides=_overrides(args),
            debug=args.debug,
        )
    if args.command == "replay":
        from moderator.cli.replay import cmd_replay

        return cmd_replay(args)
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
        return cmd_validate(args.directory, args.config, engine=args.engine)
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
    from moderator.settings import load_settings

    return cmd_export_dsa(
        load_settings(args.config, {"policies.dir": args.policies}),
        tenant=args.tenant,
        since=args.since,
        until=args.until,
        output=args.output,
        salt_env=args.salt_env,
        territorial_scope=args.territorial_scope,
        terms_url=args.terms_url,
        ground_text=args.ground_text,
        content_language=args.content_language,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    if args.check:
        from moderator.cli.check import cmd_check

        return cmd_check(args.config, _overrides(args))
    from moderator.ingest.startup import probe_cluster
    from moderator.logs import configure_logging
    from moderator.service import run_service
    from moderator.settings import load_settings

    settings = load_settings(args.config, _overrides(args))
    configure_logging(settings.log)
    # No broker within kafka.startup_timeout_s: one line and exit 2, before any client retries.
    probe_cluster(settings.kafka, client_id=f"moderator-probe-{settings.instance_id}")
    if settings.kafka.create_topics:
        from moderator.cli.topics import ensure_at_startup

        ensure_at_startup(settings)
    stop = install_stop_handlers()
    if args.with_audit_sink:
        from moderator.audit.sink.wiring import run_with_audit_sink
        from moderator.obs.http import serving

        with serving(settings.http) as shared:  # one endpoint for the consumer and the sink
            run_with_audit_sink(
                settings,
                stop,
                lambda: run_service(settings, stop, telemetry=shared),
                telemetry=shared,
            )
    else:
        run_service(settings, stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
