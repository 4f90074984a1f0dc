"""`moderator dev-stack`: run a Kafka broker and the S3 server until a signal; `dev-stack upload`
sends one upload to it and `dev-stack verdicts` reads the verdicts back.

stdout of `dev-stack` carries only the contract: one `export NAME=value` line per variable, then
`ready`. Everything meant for people (bucket, topics, how to send an upload) goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from moderator.cli.style import (
    TENANT_METAVAR,
    HelpFormatter,
    Parser,
    add_command,
    add_config_flag,
    object_key_value,
    tenant_id_value,
)
from moderator.dev.helptext import (  # cheap: stdlib only
    BUCKET,
    DESCRIPTION,
    EPILOG,
    UPLOAD_DESCRIPTION,
    UPLOAD_EPILOG,
    VERDICTS_DESCRIPTION,
    VERDICTS_EPILOG,
)
from moderator.dev.ports import MOCK_PORT_REASON, check_free, port_number  # cheap: stdlib only
from moderator.dev.shapes import SHAPE_NAMES, SHAPES  # cheap: stdlib only
from moderator.errors import ConfigError, ModeratorError
from moderator.text import safe_line  # cheap: stdlib only

if TYPE_CHECKING:
    from moderator.ingest.topics import TopicSpec
    from moderator.settings import Settings

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
DEFAULT_TIMEOUT_S = 60.0
# What `upload` and `verdicts` need from the environment `dev-stack` exports.
_STACK_ENV = ("MODERATOR_KAFKA__BOOTSTRAP_SERVERS", "MODERATOR_S3__ENDPOINT_URL")


def add_dev_stack_parser(sub: Any) -> None:
    """Add `dev-stack` to `sub` (argparse sub-parsers); cheap: nothing heavy is imported."""
    parser = add_command(
        sub,
        "dev-stack",
        help="start a Kafka broker (mock or real) and S3 server for local work; send uploads",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    _add_arguments(parser)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kafka",
        choices=("mock", "apache"),
        metavar="mock|apache",
        default="mock",
        help="mock: in-process mock, at_least_once (default); "
        "apache: a real Apache Kafka broker (Java 17+), exactly_once",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        metavar="FILE",
        help="also write the export lines to FILE once ready (for `. FILE`); removed on exit",
    )
    parser.add_argument(
        "--kafka-port",
        type=port_number,
        default=0,
        metavar="N",
        help="the broker's client port with --kafka apache (default 0: a free one); "
        "the mock's port cannot be chosen",
    )
    parser.add_argument(
        "--s3-port",
        type=port_number,
        default=0,
        metavar="N",
        help="the S3 server's port (default 0: a free one)",
    )
    add_config_flag(parser)  # the topic names and specs: kafka.topics, kafka.topic_specs
    commands = parser.add_subparsers(
        dest="dev_stack_command",
        metavar="[COMMAND]",
        help="none: start the stack; the others need its environment in the shell",
    )
    upload = add_command(
        commands,
        "upload",
        help="put a file into the stack's bucket and send its upload event; prints the event id",
        description=UPLOAD_DESCRIPTION,
        epilog=UPLOAD_EPILOG,
    )
    upload.add_argument(
        "file", nargs="?", type=Path, metavar="FILE", help="the file (default: a sample JPEG)"
    )
    upload.add_argument(
        "--tenant",
        required=True,
        type=tenant_id_value,
        metavar=TENANT_METAVAR,
        help="the event's tenant_id",
    )
    upload.add_argument(
        "--key", type=object_key_value, metavar="KEY", help="object key (default: T/<file name>)"
    )
    upload.add_argument("--bucket", default=BUCKET, metavar="B", help=f"bucket (default: {BUCKET})")
    upload.add_argument("--surface", metavar="S", help="context.surface: selects policy overrides")
    upload.add_argument(
        "--content-type", metavar="TYPE", help="default: guessed from the file name"
    )
    upload.add_argument(
        "--shape",
        choices=SHAPES,
        metavar="|".join(SHAPES),
        default="native",
        help="how the upload is announced: the UploadEvent (default), S3's notification or "
        "EventBridge event, or an SNS envelope around one",
    )
    verdicts = add_command(
        commands,
        "verdicts",
        help="print verdicts (JSON lines), waiting for the given event ids",
        description=VERDICTS_DESCRIPTION,
        epilog=VERDICTS_EPILOG,
    )
    verdicts.add_argument("event_ids", nargs="*", metavar="EVENT_ID", help="ids to wait for")
    verdicts.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait (default: {DEFAULT_TIMEOUT_S:g})",
    )


def run_dev_stack(args: argparse.Namespace) -> int:
    """`moderator dev-stack [COMMAND]` from parsed arguments; the exit code."""
    command = getattr(args, "dev_stack_command", None)
    if command == "upload":
        return cmd_upload(
            args.file,
            tenant=args.tenant,
            key=args.key,
            bucket=args.bucket,
            surface=args.surface,
            content_type=args.content_type,
            shape=args.shape,
        )
    if command == "verdicts":
        return cmd_verdicts(args.event_ids, timeout_s=args.timeout)
    return cmd_dev_stack(
        kafka=args.kafka,
        env_file=getattr(args, "env_file", None),
        config=getattr(args, "config", None),
        kafka_port=getattr(args, "kafka_port", 0),
        s3_port=getattr(args, "s3_port", 0),
    )


def cmd_dev_stack(
    buckets: Sequence[str] = (BUCKET,),
    *,
    kafka: str = "mock",
    env_file: Path | None = None,
    config: Path | None = None,
    kafka_port: int = 0,
    s3_port: int = 0,
) -> int:
    """Start the stack, print its environment and `ready`, serve until a signal; exit code.

    Must run on the main thread (it installs signal handlers, restored on return).
    """
    from moderator.dev.envfile import check_env_file, env_file_text, export_lines, remove_env_file
    from moderator.dev.guide import guide
    from moderator.dev.stack import KAFKA_KINDS, DevStackError, EmbeddedStack

    kind = next((k for k in KAFKA_KINDS if k == kafka), None)
    if kind is None:
        raise ConfigError(f"dev-stack: --kafka must be one of {', '.join(KAFKA_KINDS)}")
    _check_ports(kind, kafka_port, s3_port)
    if env_file is not None:
        check_env_file(env_file)
    specs = _topic_specs(config)  # ConfigError (exit 2) before anything starts
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # A SIGHUP already ignored (`nohup moderator dev-stack &`) stays ignored.
    handled = [s for s in _SIGNALS if s != signal.SIGHUP or signal.getsignal(s) != signal.SIG_IGN]
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        try:
            stack = EmbeddedStack(
                buckets=buckets, kafka=kind, topics=specs, kafka_port=kafka_port, s3_port=s3_port
            ).start()
        except ConfigError as exc:
            raise ConfigError(f"dev-stack: {exc}") from exc
        except DevStackError as exc:
            raise DevStackError(f"dev-stack: {exc}") from exc
        text = ""
        try:
            if stop.is_set():  # asked to stop while the broker was starting
                return 0
            env = stack.env()
            if env_file is not None:
                text = env_file_text(env, os.getpid())
                _write(env_file, text)
            sys.stdout.write("\n".join([*export_lines(env), "ready"]) + "\n")
            sys.stdout.flush()
            sys.stderr.write(
                guide(stack.kafka, env, stack.buckets, stack.topics, env_file=env_file)
            )
            sys.stderr.flush()
            # A timed wait keeps the main thread responsive to signals on every platform.
            while not stop.wait(0.5):
                pass
        finally:
            if env_file is not None and text:
                remove_env_file(env_file, text)
            stack.stop()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_ports(kind: str, kafka_port: int, s3_port: int) -> None:
    """ConfigError, one line naming the flag, for a chosen port that cannot be used."""
    if kafka_port and kind == "mock":
        raise ConfigError(
            f"dev-stack: --kafka-port {kafka_port}: {MOCK_PORT_REASON} "
            "(leave it out, or pin a real broker's port with --kafka apache)"
        )
    if kafka_port and kafka_port == s3_port:
        raise ConfigError(f"dev-stack: --kafka-port and --s3-port both name port {s3_port}")
    check_free("dev-stack: --kafka-port", kafka_port)
    check_free("dev-stack: --s3-port", s3_port)


def _write(path: Path, text: str) -> None:
    from moderator.dev.envfile import write_env_file

    try:
        write_env_file(path, text)
    except OSError as exc:
        reason = exc.strerror or exc
        raise ModeratorError(f"dev-stack: --env-file: cannot write {path}: {reason}") from exc


def _topic_specs(config: Path | None) -> list[TopicSpec]:
    """The service's topics as the settings name them, with one replica each: the dev stack
    has one broker."""
    from moderator.ingest.topics import ROLES, topic_specs
    from moderator.settings import load_settings

    overrides = {f"kafka.topic_specs.{role}.replication_factor": 1 for role in ROLES}
    return topic_specs(load_settings(config, overrides).kafka)


def cmd_upload(
    file: Path | None,
    *,
    tenant: str,
    key: str | None = None,
    bucket: str = BUCKET,
    surface: str | None = None,
    content_type: str | None = None,
    shape: str = "native",
) -> int:
    """`dev-stack upload`: put the file, send its event in `shape`, print the event id."""
    settings = _stack_settings("upload", _STACK_ENV)
    from moderator.dev.uploads import send_upload, upload_data

    data, name, guessed = upload_data(file)
    object_key = key if key is not None else f"{tenant}/{name}"
    try:
        sent = send_upload(
            settings,
            data,
            tenant=tenant,
            bucket=bucket,
            key=object_key,
            content_type=content_type or guessed,
            surface=surface,
            shape=shape,
        )
    except ConfigError as exc:  # a flag the event cannot carry: nothing was written
        raise ConfigError(f"dev-stack upload: {exc}") from exc
    print(sent.event.event_id)
    what = "a sample image" if file is None else str(file)
    print(
        safe_line(f"dev-stack: {what} put at s3://{bucket}/{object_key} ({sent.size} bytes); ")
        + f"event {sent.event.event_id} sent to topic {sent.topic}"
        + ("" if shape == "native" else f" as {SHAPE_NAMES[shape]}"),
        file=sys.stderr,
    )
    return 0


def cmd_verdicts(event_ids: Sequence[str], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
    """`dev-stack verdicts`: print verdicts as JSON lines; exit 1 when an id got none in time."""
    from moderator.dev.uploads import read_verdicts
    from moderator.text import json_text

    if timeout_s <= 0:
        raise ConfigError("dev-stack verdicts: --timeout must be above 0")
    settings = _stack_settings("verdicts", _STACK_ENV[:1])
    found, missing = read_verdicts(settings, event_ids, timeout_s=timeout_s)
    for verdict in found:
        print(json_text(verdict))
    sys.stdout.flush()
    if missing:
        print(
            f"moderator: dev-stack verdicts: no verdict within {timeout_s:g} s for "
            f"{', '.join(missing)} "
            f"(is `moderator run` consuming {settings.kafka.topics.uploads}?)",
            file=sys.stderr,
        )
        return 1
    return 0


def _stack_settings(command: str, needed: Sequence[str]) -> Settings:
    """The settings from the environment `dev-stack` exports; ConfigError when it is not set."""
    from moderator.settings import load_settings

    unset = [name for name in needed if not os.environ.get(name)]
    if unset:
        raise ConfigError(
            f"dev-stack {command}: {' and '.join(unset)} not set: load the stack's environment "
            "first (`. ./.dev-stack.env` after `moderator dev-stack --env-file .dev-stack.env`, "
            "or paste the export lines `moderator dev-stack` printed)"
        )
    return load_settings(None, {})


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m moderator.cli.devstack [--kafka mock|apache] [--env-file FILE] [COMMAND]`."""
    from moderator.cli.lines import error_line

    parser = Parser(
        prog="moderator dev-stack",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_dev_stack(args)
    except KeyboardInterrupt:
        return 130
    except ModeratorError as exc:
        print(f"moderator: {error_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


if __name__ == "__main__":
    raise SystemExit(main())
