"""The event's log context: one context variable, merged into each line by a processor."""

from __future__ import annotations

import io
import json
import threading

import pytest
import structlog

from moderator.logs import configure_logging
from moderator.obs.log_context import EventLogContext, merge_event_context
from moderator.settings import LogSettings


def _merged(**line: object) -> dict[str, object]:
    return dict(merge_event_context(None, "info", dict(line)))


def test_fields_are_on_lines_inside_the_block_only() -> None:
    assert _merged(event="x") == {"event": "x"}
    with EventLogContext({"event_id": "e1", "tenant": "acme"}):
        assert _merged(event="x") == {"event": "x", "event_id": "e1", "tenant": "acme"}
    assert _merged(event="x") == {"event": "x"}


def test_a_field_the_line_sets_wins() -> None:
    with EventLogContext({"event_id": "e1"}):
        assert _merged(event="x", event_id="mine") == {"event": "x", "event_id": "mine"}


def test_blocks_nest_and_unwind_on_error() -> None:
    with EventLogContext({"event_id": "outer"}):
        with pytest.raises(RuntimeError), EventLogContext({"event_id": "inner"}):
            assert _merged() == {"event_id": "inner"}
            raise RuntimeError("boom")
        assert _merged() == {"event_id": "outer"}
    assert _merged() == {}


def test_another_thread_does_not_see_the_fields() -> None:
    seen: list[object] = []
    with EventLogContext({"event_id": "e1"}):
        thread = threading.Thread(target=lambda: seen.append(_merged()))
        thread.start()
        thread.join()
    assert seen == [{}]


def test_configured_logging_writes_the_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging(LogSettings(level="info", format="json"))
    try:
        with EventLogContext({"event_id": "e7", "partition": 3}):
            structlog.get_logger("t").info("verdict", decision="allow")
    finally:
        configure_logging(LogSettings(level="warning", format="json"))
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert (line["event"], line["event_id"], line["partition"]) == ("verdict", "e7", 3)
