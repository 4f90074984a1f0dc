"""Standard-library records and Python warnings are written as structlog's JSON lines."""

from __future__ import annotations

import gc
import json
import logging
import warnings
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

from moderator.logs import StderrHandler, bind_process_fields, configure_logging
from moderator.settings import LogSettings


@pytest.fixture
def configured() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        configure_logging(LogSettings(level="info", format="json"))
        try:
            yield
        finally:
            logging.captureWarnings(False)
            for handler in [h for h in root.handlers if isinstance(h, StderrHandler)]:
                root.removeHandler(handler)
            root.setLevel(level)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


def test_a_library_warning_is_a_json_line_with_the_process_fields(
    monkeypatch: pytest.MonkeyPatch, configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("moderator.logs._PROCESS_FIELDS", {})
    bind_process_fields(worker="w0")
    logging.getLogger("botocore.credentials").warning("found %d files", 2)
    logging.getLogger("botocore.credentials").info("below the floor")
    [line] = _lines(capsys)
    assert line["event"] == "found 2 files"
    assert line["level"] == "warning"
    assert line["logger"] == "botocore.credentials"
    assert line["worker"] == "w0"


def test_a_python_warning_is_a_json_line(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    warnings.warn("an old argument", DeprecationWarning, stacklevel=1)
    [line] = _lines(capsys)
    assert line["logger"] == "py.warnings"
    assert "DeprecationWarning: an old argument" in line["event"]


def _connect_tcp() -> Coroutine[Any, Any, None]:
    """Named as anyio's: the coroutine its connection attempt loses."""

    async def try_connect() -> None:
        return None

    try_connect.__qualname__ = "connect_tcp.<locals>.try_connect"
    return try_connect()


def test_anyios_lost_connection_attempt_is_not_reported(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    gc.collect()  # garbage other tests left behind (a coroutine of theirs) is reported first
    capsys.readouterr()
    attempt = _connect_tcp()
    del attempt
    gc.collect()

    async def a_coroutine_of_this_test() -> None:
        return None

    lost = a_coroutine_of_this_test()
    del lost
    gc.collect()
    events = [line["event"] for line in _lines(capsys)]
    assert not any("connect_tcp" in event for event in events)
    ours = [event for event in events if "a_coroutine_of_this_test" in event]
    assert len(ours) == 1 and "never awaited" in ours[0]


def test_a_library_logger_set_below_the_floor_writes_nothing_below_it(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    chatty = logging.getLogger("werkzeug.test")
    chatty.setLevel(logging.INFO)
    try:
        chatty.info("PUT /bucket HTTP/1.1 200")
        chatty.warning("address in use")
    finally:
        chatty.setLevel(logging.NOTSET)
    assert [line["event"] for line in _lines(capsys)] == ["address in use"]
