"""`moderator dev-stack`: run a Kafka broker and the S3 server until SIGTERM or SIGINT.

stdout carries only the contract: one `export NAME=value` line per variable, then `ready`.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from moderator.dev.kafka.jars import JARS_ENV, KAFKA_VERSION  # cheap: stdlib only
from moderator.errors import ConfigError

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_DESCRIPTION = (
    f"Start a Kafka broker and an S3 server (bucket 'uploads') on loopback, print one "
    "`export NAME=value` line per variable a `moderator` process needs, then `ready`, and serve "
    "until SIGTERM or SIGINT (exit 0). --kafka mock (the default) is librdkafka's mock cluster "
    "inside this process: no transactions, so it exports MODERATOR_KAFKA__DELIVERY=at_least_once. "
    f"--kafka apache starts a real Apache Kafka {KAFKA_VERSION} node (needs Java 17+; its jars "
    f"are resolved once with Maven into ~/.cache/moderator or ${JARS_ENV}) and exports "
    "MODERATOR_KAFKA__DELIVERY=exactly_once. Exit 2 when Java or Maven is missing."
)


def add_dev_stack_parser(sub: Any) -> None:
    """Add `dev-stack` to `sub` (argparse sub-parsers); cheap: nothing heavy is imported."""
    parser = sub.add_parser(
        "dev-stack",
        help="start a Kafka broker (mock or real) and S3 server for local work",
        description=_DESCRIPTION,
    )
    _add_arguments(parser)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kafka",
        choices=("mock", "apache"),
        default="mock",
        help="mock: in-process mock, at_least_once (default); "
        "apache: a real Apache Kafka broker (Java 17+), exactly_once",
    )


def cmd_dev_stack(buckets: Sequence[str] = ("uploads",), *, kafka: str = "mock") -> int:
    """Start the stack, print its environment and `ready`, serve until a signal; exit code.

    Must run on the main thread (it installs signal handlers, restored on return).
    """
    from moderator.dev.stack import KAFKA_KINDS, DevStackError, EmbeddedStack

    kind = next((k for k in KAFKA_KINDS if k == kafka), None)
    if kind is None:
        print(f"error: dev-stack: --kafka must be one of {', '.join(KAFKA_KINDS)}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in _SIGNALS}
    try:
        try:
            stack = EmbeddedStack(buckets=buckets, kafka=kind).start()
        except ConfigError as exc:
            print(f"error: dev-stack: {exc}", file=sys.stderr)
            return 2
        except DevStackError as exc:
            print(f"error: dev-stack: {exc}", file=sys.stderr)
            return 1
        try:
            if stop.is_set():  # asked to stop while the broker was starting
                return 0
            lines = [f"export {name}={shlex.quote(value)}" for name, value in stack.env().items()]
            sys.stdout.write("\n".join([*lines, "ready"]) + "\n")
            sys.stdout.flush()
            # A timed wait keeps the main thread responsive to signals on every platform.
            while not stop.wait(0.5):
                pass
        finally:
            stack.stop()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m moderator.cli.devstack [--kafka mock|apache]`."""
    parser = argparse.ArgumentParser(prog="moderator dev-stack", description=_DESCRIPTION)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return cmd_dev_stack(kafka=args.kafka)


if __name__ == "__main__":
    raise SystemExit(main())
