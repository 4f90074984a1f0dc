"""The log line of an event whose engine call ended in an error, and at shutdown."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from moderator.engine.window import CLOSED_MESSAGE
from moderator.errors import ErrorCode
from moderator.pipeline.event_errors import log_engine_error


@pytest.mark.usefixtures("info_logs")
def test_an_engine_error_is_an_event_error_line() -> None:
    with capture_logs() as logs:
        log_engine_error(ErrorCode.ENGINE_TIMEOUT, "no answer in 30 s")
    assert logs == [
        {
            "event": "event_error",
            "code": "engine_timeout",
            "reason": "no answer in 30 s",
            "log_level": "info",
        }
    ]


@pytest.mark.usefixtures("info_logs")
def test_a_request_the_window_dropped_at_shutdown_is_abandoned_not_an_error() -> None:
    # Its verdict is never published: the next owner of the partition judges the event again.
    with capture_logs() as logs:
        log_engine_error(ErrorCode.ENGINE_ERROR, CLOSED_MESSAGE)
    assert [line["event"] for line in logs] == ["event_abandoned"]
    assert "judged again by the next owner of its partition" in logs[0]["reason"]
