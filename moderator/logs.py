"""structlog set-up: JSON lines, or a console renderer when stderr is a terminal. Logs always
go to stderr: stdout belongs to a command's data (verdict lines, statements, query rows)."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import MutableMapping
from typing import Any

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


_PROCESS_FIELDS: dict[str, str] = {}


def bind_process_fields(**fields: str) -> None:
    """Fields every log line of this process carries, from whichever thread writes it (a
    context variable is seen only by the thread that set it and the threads it starts later)."""
    _PROCESS_FIELDS.update(fields)


def _merge_process_fields(
    _logger: object, _name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    for key, value in _PROCESS_FIELDS.items():
        event_dict.setdefault(key, value)
    return event_dict


_SAMPLER: list[HotPathSampler] = []  # the configured one, for report_sampled_out


def configure_logging(settings: LogSettings) -> None:
    level = getattr(logging, settings.level.upper())
    sampler = HotPathSampler(settings.hot_path_per_s)
    _SAMPLER[:] = [sampler]
    structlog.configure(
        processors=[
            sampler,
            structlog.contextvars.merge_contextvars,
            merge_event_context,
            _merge_process_fields,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            _renderer(settings),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    route_stdlib_logs(settings, max(level, logging.WARNING))


ANYIO_UNAWAITED = r"coroutine 'connect_tcp\.<locals>\.try_connect' was never awaited"
"""anyio 4.16 loses a connection attempt whose task is cancelled before it starts (httpx
cancels them with a request): harmless, and the garbage collector reports it wherever it runs."""


def route_stdlib_logs(settings: LogSettings, level: int) -> None:
    """Standard-library records (botocore, uvicorn before its own set-up) and Python warnings
    become lines like structlog's, on stderr, from `level` up; a stray plain-text line would
    break a collector that parses each line as JSON. anyio's lost connection attempt is not
    reported (ANYIO_UNAWAITED)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(handler)
    handler = StderrHandler()
    handler.setFormatter(stdlib_formatter(settings, _merge_process_fields))
    # On the handler too: a library that sets its own logger's level (werkzeug at info) would
    # otherwise have its records pass, since the root's level does not filter propagated ones.
    handler.setLevel(level)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", ANYIO_UNAWAITED, RuntimeWarning)


def report_sampled_out() -> None:
    """At shutdown: one `sampled_out` line with the hot-path lines dropped since the last of
    each name was written, which no later line will carry."""
    dropped = _SAMPLER[0].take_dropped() if _SAMPLER else {}
    if dropped:
        structlog.get_logger("moderator").warning("sampled_out", **dropped)


def _renderer(settings: LogSettings) -> structlog.types.Processor:
    fmt = settings.format
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    if fmt == "console":
        return structlog.dev.ConsoleRenderer()
    return structlog.processors.JSONRenderer()


class StderrHandler(logging.Handler):
    """A standard-library handler writing to whatever `sys.stderr` is when a record is
    emitted (see StderrLogger)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            StderrLogger().msg(self.format(record))
        except Exception:  # as logging.StreamHandler: a line that fails never raises
            self.handleError(record)


def stdlib_formatter(
    settings: LogSettings, *prepare: structlog.types.Processor
) -> structlog.stdlib.ProcessorFormatter:
    """A `logging.Formatter` that writes a standard-library record as the line structlog
    writes: `event` (the formatted message), `level`, `timestamp`, the current event's fields,
    and `logger`, the record's logger name. `prepare` processors run first and may replace
    `event` or add fields; they find the record's arguments in `positional_args`, which is
    not written."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *prepare,
            _drop_positional_args,
            structlog.contextvars.merge_contextvars,
            merge_event_context,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _renderer(settings),
        ],
        pass_foreign_args=True,
    )


def _drop_positional_args(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event_dict.pop("positional_args", None)
    return event_dict
