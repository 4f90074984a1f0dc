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
from moderator.dev.guide import EXAMPLE_TENANT  # cheap: stdlib only
from moderator.dev.kafka.jars import JARS_ENV, KAFKA_VERSION  # cheap: stdlib only
from moderator.dev.shapes import SHAPE_NAMES, SHAPES  # cheap: stdlib only
from moderator.errors import ConfigError, ModeratorError
from moderator.text import safe_line  # cheap: stdlib only

if TYPE_CHECKING:
    from moderator.ingest.topics import TopicSpec
    from moderator.settings import Settings

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
BUCKET = "uploads"
DEFAULT_TIMEOUT_S = 60.0
# What `upload` and `verdicts` need from the environment `dev-stack` exports.
_STACK_ENV = ("MODERATOR_KAFKA__BOOTSTRAP_SERVERS", "MODERATOR_S3__ENDPOINT_URL")

_DESCRIPTION = f"""\
Start a Kafka broker and an S3 server on loopback for local work. Creates the
bucket '{BUCKET}' (versioned) and the service's topics (kafka.topics.*), prints
one `export NAME=value` line per variable a `moderator` process needs, then
`ready`, and serves until SIGTERM, SIGINT or SIGHUP (exit 0). stdout carries
only the export lines and `ready`; the bucket, the topics and how to send an
upload go to stderr. --env-file FILE also writes the export lines to FILE once
ready (complete at once: written aside, then renamed) and removes it on exit.

--kafka mock (the default) is librdkafka's mock cluster inside this process:
no transactions, so it exports MODERATOR_KAFKA__DELIVERY=at_least_once; its
topics have 4 partitions; it exports MODERATOR_KAFKA__SESSION_TIMEOUT_MS=6000, since
it holds a group its last member left for the session timeout less 1 s (44 s by
default) before a restarted `run` gets partitions. --kafka apache starts a real
Apache Kafka {KAFKA_VERSION} node (needs Java 17+; its jars are resolved once with Maven into
~/.cache/moderator or ${JARS_ENV}), creates the topics from
kafka.topic_specs with one replica, and exports
MODERATOR_KAFKA__DELIVERY=exactly_once. Exit 2 when Java or Maven is missing or
a setting is invalid, 1 when a server cannot start."""

_EPILOG = f"""\
examples:
  moderator dev-stack --env-file .dev-stack.env
  moderator dev-stack | sed '/^ready$/q'
  moderator dev-stack --kafka apache --env-file .dev-stack.env
  moderator dev-stack upload photo.jpg --tenant {EXAMPLE_TENANT}

local work in one shell (the stack in the background, its environment here, one upload):
  rm -f .dev-stack.env
  moderator dev-stack --env-file .dev-stack.env & stack=$!
  until [ -f .dev-stack.env ]; do sleep 0.2; done; . ./.dev-stack.env
  moderator run --engine fake --policies policies & service=$!
  id=$(moderator dev-stack upload photo.jpg --tenant {EXAMPLE_TENANT})
  moderator dev-stack verdicts "$id"
  kill $service; wait $service; kill $stack"""

_UPLOAD_DESCRIPTION = """\
Put FILE into the stack's bucket at T/<file name> (or --key), produce its
UploadEvent v1 to the uploads topic (kafka.topics.uploads) and print the event
id on stdout. Without FILE a generated sample JPEG is sent. --shape announces
the object as AWS would instead: an S3 event notification, an EventBridge
event, or an SNS envelope around one (or around the UploadEvent); the id
printed is the one the service reads. S3's and EventBridge's events carry no
surface: they are judged under 'default'. The addresses come
from the environment `moderator dev-stack` exports
(MODERATOR_KAFKA__BOOTSTRAP_SERVERS, MODERATOR_S3__ENDPOINT_URL, AWS_*). Exit 2
when they are not set or an argument is invalid, 1 when S3 or Kafka fails."""

_UPLOAD_EPILOG = f"""\
examples:
  moderator dev-stack upload photo.jpg --tenant {EXAMPLE_TENANT}
  moderator dev-stack upload --tenant {EXAMPLE_TENANT} --surface profile   # a sample image
  moderator dev-stack upload a.png --tenant {EXAMPLE_TENANT} --key {EXAMPLE_TENANT}/2026/a.png
  moderator dev-stack upload photo.jpg --tenant {EXAMPLE_TENANT} --shape sns-s3"""

_VERDICTS_DESCRIPTION = """\
Read the verdicts topic (kafka.topics.verdicts) from the beginning and print
each verdict as one JSON line. With EVENT_IDs: wait until each has a verdict and
print those (exit 0), or exit 1 after --timeout seconds naming the ids still
missing. Without: print the verdicts on the topic now and exit 0. Needs
MODERATOR_KAFKA__BOOTSTRAP_SERVERS from `moderator dev-stack` (exit 2 without)."""

_VERDICTS_EPILOG = """\
examples:
  moderator dev-stack verdicts "$id"
  moderator dev-stack verdicts --timeout 120 dev-0123 dev-4567
  moderator dev-stack verdicts | python3 -m json.tool --json-lines"""


def add_dev_stack_parser(sub: Any) -> None:
    """Add `dev-stack` to `sub` (argparse sub-parsers); cheap: nothing heavy is imported."""
    parser = add_command(
        sub,
        "dev-stack",
        help="start a Kafka broker (mock or real) and S3 server for local work; send uploads",
        description=_DESCRIPTION,
        epilog=_EPILOG,
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
        description=_UPLOAD_DESCRIPTION,
        epilog=_UPLOAD_EPILOG,
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
        description=_VERDICTS_DESCRIPTION,
        epilog=_VERDICTS_EPILOG,
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
    )


def cmd_dev_stack(
    buckets: Sequence[str] = (BUCKET,),
    *,
    kafka: str = "mock",
    env_file: Path | None = None,
    config: Path | None = None,
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
            stack = EmbeddedStack(buckets=buckets, kafka=kind, topics=specs).start()
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
            f"dev-stack verdicts: no verdict within {timeout_s:g} s for {', '.join(missing)} "
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
        description=_DESCRIPTION,
        epilog=_EPILOG,
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
