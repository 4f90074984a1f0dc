"""Hot-path log sampling: a per-second quota per event name, the rest counted on the next line."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog

from moderator.logs import configure_logging, report_sampled_out
from moderator.obs.log_sampling import HotPathSampler
from moderator.settings import LogSettings


def _through(sampler: HotPathSampler, name: str) -> dict[str, Any] | None:
    try:
        return dict(sampler(None, "info", {"event": name}))
    except structlog.DropEvent:
        return None


def test_a_quota_per_second_and_name_and_the_dropped_count_on_the_next_line() -> None:
    now = [100.0]
    sampler = HotPathSampler(2, clock=lambda: now[0])
    first = [_through(sampler, "verdict") for _ in range(5)]
    assert first == [{"event": "verdict"}, {"event": "verdict"}, None, None, None]
    assert _through(sampler, "event_error") == {"event": "event_error"}  # its own quota
    assert _through(sampler, "consuming") == {"event": "consuming"}  # never sampled
    now[0] = 100.99
    assert _through(sampler, "verdict") is None
    now[0] = 101.0  # a new window: the next line says how many were left out
    assert _through(sampler, "verdict") == {"event": "verdict", "sampled_out": 4}
    assert _through(sampler, "verdict") == {"event": "verdict"}


def test_zero_keeps_every_line() -> None:
    sampler = HotPathSampler(0)
    assert all(_through(sampler, "verdict") is not None for _ in range(1000))


def test_configured_logging_samples_only_the_hot_path(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSettings(level="debug", format="json", hot_path_per_s=3))
    log = structlog.get_logger("test")
    for _ in range(50):
        log.debug("verdict", decision="allow")
        log.info("policy_changed", tenant="acme")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    names = [line["event"] for line in lines]
    # All 50 within one second on any machine this runs on; at worst a second window opens.
    assert 3 <= names.count("verdict") <= 6
    assert names.count("policy_changed") == 50


def test_the_dropped_lines_no_later_line_carries_are_reported_at_shutdown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(LogSettings(level="info", format="json", hot_path_per_s=2))
    log = structlog.get_logger("test")
    for _ in range(30):  # all within one second
        log.info("event_abandoned", reason="engine window closed")
    log.warning("dead_lettered", reason="not JSON")
    report_sampled_out()
    report_sampled_out()  # nothing more was dropped: no second line
    try:
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        configure_logging(LogSettings(level="warning", format="json"))
    last = [line for line in lines if line["event"] == "sampled_out"]
    assert len(last) == 1
    assert (
        last[0]["event_abandoned"]
        + sum(1 for line in lines if line["event"] == "event_abandoned")
        + sum(line.get("sampled_out", 0) for line in lines if line["event"] == "event_abandoned")
        == 30
    )
    assert "dead_lettered" not in last[0]


def test_a_negative_quota_is_refused() -> None:
    with pytest.raises(ValueError, match="hot_path_per_s"):
        LogSettings(hot_path_per_s=-1)
