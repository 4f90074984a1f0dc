"""What a replay shows people: the progress line on stderr and the dry run's census table."""

from __future__ import annotations

import io
import types
from collections import Counter

import pytest

from moderator.replay import progress
from moderator.replay.census import Census
from moderator.replay.progress import LOG_EVERY_S, TTY_EVERY_S, ReplayProgress


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    # Only progress's view of `time` is replaced; the rest of the process keeps the real clock.
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(monotonic=fake))
    return fake


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_a_log_gets_a_line_every_few_seconds(clock: Clock) -> None:
    out = io.StringIO()
    shown = ReplayProgress(out, 1000)
    clock.now += 1
    shown.advance(10)
    assert out.getvalue() == ""
    clock.now += LOG_EVERY_S - 1
    shown.advance(10)
    assert lines(out) == ["replay: 20/1000 messages (2%), 4.0 msg/s, ETA 4 min 05 s"]
    clock.now += LOG_EVERY_S - 0.5
    shown.advance(30)
    assert len(lines(out)) == 1
    clock.now += 0.5
    shown.advance(30)
    assert lines(out)[1] == "replay: 80/1000 messages (8%), 8.0 msg/s, ETA 1 min 55 s"
    assert "\r" not in out.getvalue()


def test_finish_of_a_complete_run_shows_the_whole_range(clock: Clock) -> None:
    out = io.StringIO()
    shown = ReplayProgress(out, 1000)
    clock.now += 2
    shown.advance(990)  # the last offsets were transaction markers: never counted
    clock.now += 18
    shown.finish(complete=True)
    assert lines(out)[-1] == "replay: 1000/1000 messages (100%), 50.0 msg/s"


def test_finish_of_a_stopped_run_shows_how_far_it_got(clock: Clock) -> None:
    out = io.StringIO()
    shown = ReplayProgress(out, 1000)
    clock.now += 10
    shown.advance(250)
    shown.finish(complete=False)
    assert lines(out)[-1] == "replay: 250/1000 messages (25%), 25.0 msg/s, ETA 30 s"


def test_a_resumed_run_rates_only_what_it_read_itself(clock: Clock) -> None:
    out = io.StringIO()
    shown = ReplayProgress(out, 7200, done=3600)
    clock.now += LOG_EVERY_S
    shown.advance(5)
    assert lines(out) == ["replay: 3605/7200 messages (50%), 1.0 msg/s, ETA 59 min 55 s"]


def test_a_resume_counts_what_its_earlier_processes_committed(clock: Clock) -> None:
    """Stopped at 66 of 208 offsets and resumed: the line goes on from 66, and its rate and
    time left count only what the resumed run reads."""
    out = io.StringIO()
    shown = ReplayProgress(out, 208)
    shown.resumed(66)
    clock.now += LOG_EVERY_S
    shown.advance(41)
    assert lines(out) == ["replay: 107/208 messages (51%), 8.2 msg/s, ETA 12 s"]
    clock.now += LOG_EVERY_S
    shown.advance(101)
    shown.finish(complete=True)
    assert lines(out)[1:] == ["replay: 208/208 messages (100%), 14.2 msg/s"]


def test_hours_left(clock: Clock) -> None:
    out = io.StringIO()
    shown = ReplayProgress(out, 100_000)
    clock.now += LOG_EVERY_S
    shown.advance(10)
    assert lines(out) == ["replay: 10/100000 messages (0%), 2.0 msg/s, ETA 13 h 53 min"]


def test_no_rate_no_eta(clock: Clock) -> None:
    out = io.StringIO()
    shown = ReplayProgress(out, 50)
    clock.now += LOG_EVERY_S
    shown.advance(0)
    assert lines(out) == ["replay: 0/50 messages (0%), 0.0 msg/s"]


def test_an_unknown_total_shows_counts_only(clock: Clock) -> None:
    out = io.StringIO()
    shown = ReplayProgress(out, 0)
    clock.now += LOG_EVERY_S
    shown.advance(25)
    shown.finish(complete=True)
    assert lines(out)[-1] == "replay: 25/0 messages, 5.0 msg/s"


def test_more_than_the_total_is_shown_as_the_total(clock: Clock) -> None:
    out = io.StringIO()
    shown = ReplayProgress(out, 10)
    clock.now += LOG_EVERY_S
    shown.advance(12)
    assert lines(out) == ["replay: 10/10 messages (100%), 2.4 msg/s"]


def test_a_terminal_line_is_redrawn_in_place(clock: Clock) -> None:
    out = Terminal()
    shown = ReplayProgress(out, 100)
    clock.now += TTY_EVERY_S
    shown.advance(1)
    clock.now += TTY_EVERY_S / 2
    shown.advance(1)  # too soon: not drawn
    clock.now += TTY_EVERY_S
    shown.advance(1)
    clock.now += TTY_EVERY_S / 2
    shown.finish(complete=True)
    assert out.getvalue() == (
        "\rreplay: 1/100 messages (1%), 5.0 msg/s, ETA 20 s\x1b[K"
        "\rreplay: 3/100 messages (3%), 6.0 msg/s, ETA 16 s\x1b[K"
        "\rreplay: 100/100 messages (100%), 166.7 msg/s\x1b[K\n"
    )


def test_a_note_in_a_log_is_a_line_of_its_own(clock: Clock) -> None:
    out = io.StringIO()
    shown = ReplayProgress(out, 100)
    shown.note("moderator: warning: tenant news ...")
    clock.now += LOG_EVERY_S
    shown.advance(50)
    shown.note("moderator: warning: tenant zeta ...")
    assert lines(out) == [
        "moderator: warning: tenant news ...",
        "replay: 50/100 messages (50%), 10.0 msg/s, ETA 5 s",
        "moderator: warning: tenant zeta ...",
    ]


def test_a_note_on_a_terminal_goes_above_the_progress_line(clock: Clock) -> None:
    out = Terminal()
    shown = ReplayProgress(out, 100)
    shown.note("before")  # nothing drawn yet: a plain line
    clock.now += TTY_EVERY_S
    shown.advance(1)
    shown.note("during")
    assert out.getvalue() == (
        "before\n"
        "\rreplay: 1/100 messages (1%), 5.0 msg/s, ETA 20 s\x1b[K"
        "\r\x1b[Kduring\nreplay: 1/100 messages (1%), 5.0 msg/s, ETA 20 s"
    )


# -- the dry run's census ----------------------------------------------------------------------


def test_census_table() -> None:
    census = Census(
        offsets={1: 50, 0: 1200},
        messages=Counter({0: 1180, 1: 50}),
        events=Counter({0: 300, 1: 7}),
        tenants=Counter({"kids": 7, "acme": 300}),
        malformed=2,
        filtered=921,
    )
    assert census.lines() == [
        "partition  range size   messages     events",
        "        0        1200       1180        300",
        "        1          50         50          7",
        "    total        1250       1230        307",
        "",
        "tenant                       events",
        "acme                            300",
        "kids                              7",
        "filtered out: 921, malformed messages: 2",
    ]


def test_census_of_an_empty_range() -> None:
    census = Census(offsets={0: 0})
    assert census.lines() == [
        "partition  range size   messages     events",
        "        0           0          0          0",
        "    total           0          0          0",
        "",
        "tenant                       events",
        "filtered out: 0, malformed messages: 0",
    ]


def test_census_columns_hold_large_counts() -> None:
    census = Census(offsets={12: 123_456_789}, messages=Counter({12: 5}))
    header, row, total = census.lines()[:3]
    assert row.split() == ["12", "123456789", "5", "0"]
    assert total.split() == ["total", "123456789", "5", "0"]
    assert len(row) == len(header)
