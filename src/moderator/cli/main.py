"""`moderator` entry point: argument parsing, settings, exit codes (0 ok, 1 runtime, 2 usage)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moderator import __version__
from moderator.engine.tiny import ARCHES as TINY_ARCHES  # cheap: torch is imported on use only
from moderator.errors import ConfigError, ModeratorError

ENGINES = ("nudenet", "transformers", "lmdeploy", "openai", "fake")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moderator", description="Streaming content moderation for image uploads."
    )
    parser.add_argument("--version", action="version", version=f"moderator {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="consume uploads and publish verdicts until SIGTERM/SIGINT")
    _engine_flags(run)
    run.add_argument("--config", type=Path, help="YAML settings file")
    run.add_argument("--policies", type=Path, help="policy directory (policies.dir)")

    demo = sub.add_parser("demo", help="run everything embedded on sample images, print verdicts")
    _engine_flags(demo)
    demo.add_argument("--events", type=int, default=24, help="sample uploads to moderate")
    demo.add_argument("--config", type=Path, help="YAML settings file")
    demo.add_argument("--policies", type=Path, help="policy directory (default: bundled)")

    sub.add_parser("dev-stack", help="start the embedded broker and S3 server for local work")

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


def _engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=ENGINES, help="engine.kind")
    p.add_argument("--model", help="engine.model (checkpoint path or served model name)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "engine.kind": getattr(args, "engine", None),
        "engine.model": getattr(args, "model", None),
        "policies.dir": getattr(args, "policies", None),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        if args.debug:
            raise
        print(f"moderator: {exc}", file=sys.stderr)
        return 2
    except ModeratorError as exc:
        if args.debug:
            raise
        print(f"moderator: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "dev-stack":
        from moderator.cli.devstack import cmd_dev_stack

        code: int = cmd_dev_stack()
        return code
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
    if args.command == "model":
        from moderator.cli.model import cmd_make_tiny

        return cmd_make_tiny(args.directory, args.arch, args.seed)
    raise ConfigError(f"unknown command {args.command}")


def _cmd_run(args: argparse.Namespace) -> int:
    from moderator.logs import configure_logging
    from moderator.service import run_service
    from moderator.settings import load_settings

    settings = load_settings(args.config, _overrides(args))
    configure_logging(settings.log)
    stop = install_stop_handlers()
    run_service(settings, stop)
    return 0


def install_stop_handlers() -> threading.Event:
    """SIGTERM/SIGINT set the returned event: the loop drains and exits 0."""
    stop = threading.Event()

    def handler(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


if __name__ == "__main__":
    raise SystemExit(main())
