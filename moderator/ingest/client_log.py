"""librdkafka's own log lines routed into structlog, each broker's repeats held back.

Every confluent-kafka client the package builds gets `client_logger()` as its `logger`
config (ingest/kafka.py `build_client`), so no raw `%3|...|FAIL|...` line reaches stderr.
librdkafka retries an unreachable broker every second or faster and logs each failure; the
forwarder lets one line through per broker and kind of message per window (60 s) and counts
the rest into the next line's `repeated` field.

Levels: librdkafka's syslog levels arrive as Python levels (confluent-kafka maps 0-2 to
CRITICAL, 3 to ERROR, 4 to WARNING, 5-6 to INFO, 7 to DEBUG). ERROR and WARNING become
structlog `warning`: the client recovers from them by itself (a broker comes back), and what
it cannot recover from reaches the caller as an exception. CRITICAL stays `error`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import structlog

from moderator.masking import mask_passwords

LOGGER_NAME = "moderator.kafka.client"
WINDOW_S = 60.0
_MAX_KEYS = 512  # kinds remembered; the oldest is forgotten first

_THREAD = re.compile(r"^\[thrd:(?P<thread>[^\]]*)\]:\s*(?P<rest>.*)$", re.DOTALL)
# `sasl_ssl://b-1.example:9096/1: ...` or `localhost:9092/bootstrap: ...`
_BROKER = re.compile(r"^(?P<broker>(?:[a-z_]+://)?[^\s/]+:\d+/\S+?):\s+(?P<text>.*)$", re.DOTALL)
_ADDRESS = re.compile(r"ipv[46]#\S+")  # one broker name resolves to several addresses
_PAREN = re.compile(r"\s*\([^()]*\)")  # "(after 0ms in state CONNECT, 3 identical error(s) ...)"
_NUMBER = re.compile(r"\d+")
_INSTALL = threading.Lock()  # two clients built at once must not add two forwarders


@dataclass(frozen=True)
class ClientLogLine:
    """One librdkafka log line, taken apart."""

    facility: str  # FAIL, ERROR, REQTMOUT, ...
    client: str  # rdkafka#producer-1
    broker: str | None  # host:port, None for lines not about one broker
    message: str  # the text after the thread prefix

    @property
    def kind(self) -> str:
        """The message without what changes between repeats: addresses, numbers, asides."""
        named = _BROKER.match(self.message)  # the broker is part of the key already
        text = _ADDRESS.sub("<address>", named["text"] if named else self.message)
        for _ in range(3):  # asides nest one level: "(..., 3 identical error(s) suppressed)"
            text = _PAREN.sub("", text)
        return _NUMBER.sub("#", text).strip()


def parse_line(facility: str, client: str, text: str) -> ClientLogLine:
    """Split `[thrd:NAME]: BROKER/ID: message` into its parts; the broker as host:port."""
    broker: str | None = None
    message = text.strip()
    match = _THREAD.match(message)
    if match is not None:
        message = match["rest"].strip()
        broker = _broker_name(match["thread"])
    named = _BROKER.match(message)
    if named is not None:
        broker = _broker_name(named["broker"]) or broker
    return ClientLogLine(facility=facility, client=client, broker=broker, message=message)


def _broker_name(name: str) -> str | None:
    """`sasl_ssl://host:9093/1` → `host:9093`; None for a thread that is not a broker's."""
    name = name.split("://", 1)[-1]
    address, _, _ = name.partition("/")
    return address if re.fullmatch(r"[^\s:]+:\d+|\[[^\]]+\]:\d+", address) else None


class RepeatFilter:
    """Admits a key's first line, then at most one per `window_s`; counts what it held back.

    Not thread-safe by itself: the forwarder calls it under its handler lock.
    """

    def __init__(
        self,
        window_s: float = WINDOW_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = _MAX_KEYS,
    ) -> None:
        self._window_s = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._seen: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def admit(self, key: Hashable) -> int | None:
        """None to hold this line back; else how many lines of `key` were held back since the
        last admitted one (0 for a first line)."""
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self._window_s:
            self._seen[key] = (last[0], last[1] + 1)
            return None
        held = last[1] if last is not None else 0
        self._seen[key] = (now, 0)
        self._seen.move_to_end(key)
        while len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)
        return held


def _structlog_level(levelno: int) -> str:
    if levelno >= logging.CRITICAL:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    return "info" if levelno >= logging.INFO else "debug"


class ClientLogForwarder(logging.Handler):
    """A stdlib handler for the records confluent-kafka logs (`"%s [%s] %s"` with facility,
    client name and text as args): one structlog `kafka_client_log` event per admitted line."""

    def __init__(
        self, window_s: float = WINDOW_S, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(logging.DEBUG)
        self._repeats = RepeatFilter(window_s, clock=clock)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = _line(record)
            held = self._repeats.admit((line.broker, line.facility, line.kind))
            if held is None:
                return
            fields: dict[str, object] = {
                "facility": line.facility,
                "client": line.client,
                "message": mask_passwords(line.message),
            }
            if line.broker is not None:
                fields["broker"] = line.broker
            if held:
                fields["repeated"] = held
            log = structlog.get_logger("moderator.kafka")
            getattr(log, _structlog_level(record.levelno))("kafka_client_log", **fields)
        except Exception:  # a log line must never fail the poll that delivered it
            self.handleError(record)


def _line(record: logging.LogRecord) -> ClientLogLine:
    args = record.args
    if isinstance(args, tuple) and len(args) == 3:
        facility, client, text = (str(a) for a in args)
        return parse_line(facility, client, text)
    return parse_line("LOG", "", record.getMessage())  # not from confluent-kafka's log_cb


def client_logger() -> logging.Logger:
    """The stdlib logger given to every confluent-kafka client as its `logger` config: one
    ClientLogForwarder, shared by all clients so that a broker down is reported once, not
    once per client; not propagated to the root logger (that would print each line again)."""
    logger = logging.getLogger(LOGGER_NAME)
    with _INSTALL:
        if not any(isinstance(h, ClientLogForwarder) for h in logger.handlers):
            logger.addHandler(ClientLogForwarder())
            logger.setLevel(logging.DEBUG)  # structlog's level decides what is shown
            logger.propagate = False
    return logger


def silent_logger() -> logging.Logger:
    """A `logger` config that drops everything: for a probe that reports the outcome itself."""
    logger = logging.getLogger(LOGGER_NAME + ".silent")
    with _INSTALL:
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())
            logger.propagate = False
    return logger
