"""`moderator audit serve` writes uvicorn's lines as the JSON lines every command writes."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from moderator.cli.audit_serve import uvicorn_log_config
from moderator.settings import LogSettings

uvicorn = pytest.importorskip("uvicorn", reason="audit serve needs the api extra")

LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
QUERY = "tenant=acme&object_key=users/jane.doe/passport.jpg&sha256=ab12"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """dictConfig changes the process's loggers; the next test gets them back as they were."""
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.level, logger.propagate))
    yield
    for logger, handlers, level, propagate in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def configure(level: str = "info", fmt: str = "json") -> None:
    """What audit serve's uvicorn.run does with the settings: dictConfig, then levels."""
    settings = LogSettings.model_validate({"level": level, "format": fmt})
    uvicorn.Config(app=None, log_config=uvicorn_log_config(settings), log_level=level)


def log_access(target: str) -> None:
    """As uvicorn's h11 and httptools protocols write the access line."""
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", target, "1.1", 200
    )


def json_lines(err: str) -> list[dict[str, Any]]:
    assert err.endswith("\n"), err
    return [json.loads(line) for line in err.splitlines()]


def test_uvicorn_lines_are_json_with_the_keys_of_every_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure()
    logging.getLogger("uvicorn.error").info(
        "Uvicorn running on %s://%s:%d (Press CTRL+C to quit)",
        "http",
        "127.0.0.1",
        8700,
        extra={"color_message": "Uvicorn running on \x1b[1m%s://%s:%d\x1b[0m"},
    )
    log_access(f"/v1/verdicts?{QUERY}")
    captured = capsys.readouterr()
    assert captured.out == ""
    started, access = json_lines(captured.err)
    assert set(started) == {"event", "level", "logger", "timestamp"}
    assert started["event"] == "Uvicorn running on http://127.0.0.1:8700 (Press CTRL+C to quit)"
    assert (started["level"], started["logger"]) == ("info", "uvicorn.error")
    assert started["timestamp"].endswith("Z")
    assert {k: v for k, v in access.items() if k != "timestamp"} == {
        "event": "http_request",
        "client": "127.0.0.1:5000",
        "method": "GET",
        "path": "/v1/verdicts",
        "http_version": "1.1",
        "status": 200,
        "level": "info",
        "logger": "uvicorn.access",
    }
    assert "tenant" not in captured.err and "passport" not in captured.err


def test_an_access_line_of_another_shape_loses_its_query_string(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure()
    logging.getLogger("uvicorn.access").info('127.0.0.1:5000 - "GET /v1/verdicts?%s"', QUERY)
    (line,) = json_lines(capsys.readouterr().err)
    assert line["event"] == '127.0.0.1:5000 - "GET /v1/verdicts'
    assert line["logger"] == "uvicorn.access"


def test_levels_follow_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    configure(level="warning")
    log_access("/healthz")
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    logging.getLogger("a.library").info("a library's info line")
    logging.getLogger("a.library").warning("a library's warning")
    logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=ValueError())
    warning, error = json_lines(capsys.readouterr().err)
    assert (warning["event"], warning["level"]) == ("a library's warning", "warning")
    assert warning["logger"] == "a.library"
    assert (error["event"], error["level"]) == ("Exception in ASGI application", "error")
    assert "ValueError" in error["exception"]


def test_the_console_format_is_kept_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    configure(fmt="console")
    log_access(f"/v1/verdicts?{QUERY}")
    err = capsys.readouterr().err
    assert "http_request" in err and "/v1/verdicts" in err and "tenant" not in err


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_served_request_logs_one_json_access_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A real uvicorn server and request: the record's arguments are as access_fields reads."""
    settings = LogSettings.model_validate({"level": "info", "format": "json"})
    config = uvicorn.Config(
        hello,
        host="127.0.0.1",
        port=0,
        log_config=uvicorn_log_config(settings),
        log_level="info",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/v1/verdicts?{QUERY}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            assert answer.read() == b"ok"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    lines = json_lines(capsys.readouterr().err)
    assert all(set(line) >= {"event", "level", "logger", "timestamp"} for line in lines)
    assert any(line["event"].startswith("Uvicorn running on") for line in lines)
    (access,) = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert access["event"] == "http_request"
    assert access["client"].startswith("127.0.0.1:")
    assert (access["method"], access["path"], access["status"]) == ("GET", "/v1/verdicts", 200)
    assert access["http_version"] == "1.1"
    assert "tenant" not in json.dumps(lines) and "passport" not in json.dumps(lines)
