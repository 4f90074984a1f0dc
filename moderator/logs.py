"""structlog set-up: JSON lines, or a console renderer when stderr is a terminal. Logs always
go to stderr: stdout belongs to a command's data (verdict lines, statements, query rows)."""

from __future__ import annotations

import logging
import sys

import structlog

from moderator.obs.log_context import merge_event_context
from moderator.obs.log_sampling import HotPathSampler
from moderator.settings import LogSettings


class StderrLogger:
    """Writes each line to whatever `sys.stderr` is when the line is logged.

    structlog's PrintLogger keeps the stream it was built with; a stream replaced since (a test
    harness capturing output, a daemon redirecting) would then be written to after it closed.
    """

    def msg(self, message: str) -> None:
        stream = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warning = warn = error = critical = exception = failure = msg


def _stderr_logger(*_args: object) -> StderrLogger:
    return StderrLogger()


def route_logs_to_stderr() -> None:
    """Before any settings are read: send structlog's output to stderr, keeping its other
    defaults. Unconfigured, structlog prints to stdout, where a command's data goes."""
    structlog.configure(logger_factory=_stderr_logger)


def configure_cli_logging(settings: LogSettings) -> None:
    """`configure_logging` for a command that reports to stderr itself: `info` (the service
    default) becomes `warning`, so a routine event (`policies_loaded`) does not interleave with
    the command's own lines."""
    level = "warning" if settings.level == "info" else settings.level
    configure_logging(settings.model_copy(update={"level": level}))


def configure_logging(settings: LogSettings) -> None:
    level = getattr(logging, settings.level.upper())
    fmt = settings.format
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            HotPathSampler(settings.hot_path_per_s),
            structlog.contextvars.merge_contextvars,
            merge_event_context,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    # librdkafka and botocore log through the standard library: same stream, same level floor.
    logging.basicConfig(stream=sys.stderr, level=max(level, logging.WARNING), format="%(message)s")
