"""The log line of an event whose engine call ended in an error.

At shutdown the engine window answers the requests it still holds with an engine error
(`CLOSED_MESSAGE`). Those events' verdicts are never published: their offsets are not
committed, and the next owner of their partitions judges them again. Their line says so
(`event_abandoned`) instead of reading like an error verdict (`event_error`).
"""

from __future__ import annotations

import structlog

from moderator.engine.window import CLOSED_MESSAGE
from moderator.errors import ErrorCode

log = structlog.get_logger("moderator.pipeline")

ABANDONED = "not published: judged again by the next owner of its partition"


def log_engine_error(code: ErrorCode, message: str) -> None:
    """`event_error` with the code and message, or `event_abandoned` at shutdown."""
    if code is ErrorCode.ENGINE_ERROR and message == CLOSED_MESSAGE:
        log.info("event_abandoned", reason=f"{CLOSED_MESSAGE}; {ABANDONED}")
    else:
        log.info("event_error", code=code.value, reason=message)
