"""Replay's flag parsing (times, offsets, sample, run ids) and the event filter it implies."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from moderator.errors import ConfigError
from moderator.replay.request import (
    MAX_OFFSET,
    EventFilter,
    OffsetRange,
    check_run_id,
    new_run_id,
    parse_offsets,
    parse_sample,
    parse_time,
    parse_window,
    sampled,
)

# 2026-11-29T02:00:00Z in milliseconds since the epoch.
T0 = int(datetime(2026, 11, 29, 2, tzinfo=UTC).timestamp()) * 1000


# -- parse_time --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-29T02:00:00Z", T0),
        ("2026-11-29T03:00:00+01:00", T0),
        ("2026-11-28T21:30:00-04:30", T0),
        ("2026-11-29T02:00:00+00:00", T0),
        ("2026-11-29T02:00:00-00:00", T0),
        ("2026-11-29t02:00:00z", T0),
        ("2026-11-29 02:00:00Z", T0),
        ("2026-11-29T02:00:00.5Z", T0 + 500),
        ("2026-11-29T02:00:00.123Z", T0 + 123),
        ("2026-11-29T02:00:00.123456Z", T0 + 123),
        # Nanoseconds (Kafka tools print them): cut to microseconds, never rounded up.
        ("2026-11-29T02:00:00.123999999Z", T0 + 123),
        ("2026-11-29T03:00:00.000000001+01:00", T0),
    ],
)
def test_parse_time_accepts_rfc3339_with_an_offset(text: str, expected: int) -> None:
    assert parse_time("--from", text) == expected


def test_parse_time_is_exact_to_the_millisecond() -> None:
    base = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    for ms in range(1000):
        text = f"{base:%Y-%m-%dT%H:%M:%S}.{ms:03d}Z"
        assert parse_time("--to", text) == int(base.timestamp()) * 1000 + ms


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-29",  # a date alone
        "2026-11-29T02:00:00",  # no offset: which zone was meant?
        "2026-11-29T02:00Z",  # no seconds
        "2026-11-29T02:00:00+0100",  # offset without its colon
        "2026-11-29T02:00:00 Z",
        "2026-11-29T02:00:00.Z",
        "1764381600000",  # epoch milliseconds are not RFC 3339
        "yesterday",
        "",
        " 2026-11-29T02:00:00Z",
        "2026-11-29T02:00:00Z\n",
    ],
)
@pytest.mark.parametrize("flag", ["--from", "--to"])
def test_parse_time_rejects_anything_else_naming_the_flag(flag: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_time(flag, text)
    message = str(info.value)
    assert message.startswith(f"{flag}: ")
    assert "RFC 3339" in message


@pytest.mark.parametrize(
    "text",
    [
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-29T25:00:00Z",
        "2026-11-29T02:00:00+24:00",
    ],
)
def test_parse_time_rejects_impossible_times_naming_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--to: .*not a valid time"):
        parse_time("--to", text)


# -- parse_offsets -----------------------------------------------------------------------------


def test_parse_offsets_sorts_by_partition() -> None:
    assert parse_offsets("2:5-9, 0:100-200,1:0-50") == (
        OffsetRange(0, 100, 200),
        OffsetRange(1, 0, 50),
        OffsetRange(2, 5, 9),
    )


def test_parse_offsets_allows_an_empty_range_and_the_largest_offset() -> None:
    assert parse_offsets("0:7-7") == (OffsetRange(0, 7, 7),)
    assert parse_offsets(f"3:0-{MAX_OFFSET}") == (OffsetRange(3, 0, MAX_OFFSET),)


def test_parse_offsets_rejects_a_partition_given_twice() -> None:
    with pytest.raises(ConfigError, match=r"^--offsets: partition 1 is given twice"):
        parse_offsets("1:0-5,0:0-5,1:10-20")


@pytest.mark.parametrize("item", ["0:200-100", f"0:0-{MAX_OFFSET + 1}"])
def test_parse_offsets_rejects_end_before_start_or_past_the_largest_offset(item: str) -> None:
    with pytest.raises(ConfigError, match=r"^--offsets: .*END must be >= START"):
        parse_offsets(item)


@pytest.mark.parametrize(
    "text",
    ["", "0:100", "0-100", "a:1-2", "0:1-b", "0:-1-5", "-1:0-5", "0:1-2,", "0:1-2;1:3-4", "0:1..2"],
)
def test_parse_offsets_rejects_bad_items(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--offsets: .*PARTITION:START-END"):
        parse_offsets(text)


# -- parse_sample, run ids ---------------------------------------------------------------------


@pytest.mark.parametrize(("text", "rate"), [("1", 1.0), ("0.1", 0.1), ("1e-3", 0.001), (".5", 0.5)])
def test_parse_sample_accepts_fractions_up_to_one(text: str, rate: float) -> None:
    assert parse_sample(text) == rate


@pytest.mark.parametrize("text", ["0", "0.0", "-0.1", "1.5", "x", "", "nan", "inf", "10%"])
def test_parse_sample_rejects_the_rest_naming_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--sample: .*fraction in \(0, 1\]"):
        parse_sample(text)


@pytest.mark.parametrize("text", ["r20261205T231500Z-3f9a", "a", "A.b_c-9", "x" * 64])
def test_check_run_id_accepts_run_ids(text: str) -> None:
    assert check_run_id(text) == text


@pytest.mark.parametrize("text", ["", "-r1", ".r1", "_r1", "r/1", "../r1", "r 1", "r1\n", "x" * 65])
def test_check_run_id_rejects_the_rest_naming_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--resume: .*not a run id"):
        check_run_id(text)


def test_new_run_id_is_the_utc_start_time_and_a_random_suffix() -> None:
    now = datetime(2026, 12, 6, 0, 15, 0, tzinfo=timezone(timedelta(hours=1)))
    run_id = new_run_id(now)
    assert re.fullmatch(r"r20261205T231500Z-[0-9a-f]{4}", run_id)
    assert check_run_id(run_id) == run_id
    assert len({new_run_id(now) for _ in range(50)}) > 1


def test_new_run_ids_sort_by_start_time() -> None:
    early = new_run_id(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    late = new_run_id(datetime(2026, 10, 2, 3, 4, 5, tzinfo=UTC))
    assert early < late


# -- EventFilter -------------------------------------------------------------------------------


def test_filter_keeps_everything_by_default() -> None:
    keep = EventFilter()
    assert keep.keeps("e1", "acme", T0)
    assert keep.keeps("e1", "acme", None)


def test_filter_keeps_only_the_asked_tenants() -> None:
    keep = EventFilter(tenants=frozenset({"acme", "kids"}))
    assert keep.keeps("e1", "acme", None)
    assert keep.keeps("e1", "kids", None)
    assert not keep.keeps("e1", "news", None)
    assert not keep.keeps("e1", "", None)


def test_filter_window_includes_its_start_and_excludes_its_end() -> None:
    keep = EventFilter(from_ms=T0, to_ms=T0 + 1000)
    assert not keep.keeps("e", "acme", T0 - 1)
    assert keep.keeps("e", "acme", T0)
    assert keep.keeps("e", "acme", T0 + 999)
    assert not keep.keeps("e", "acme", T0 + 1000)


def test_filter_window_may_be_open_on_either_side() -> None:
    assert EventFilter(from_ms=T0).keeps("e", "acme", 10**15)
    assert not EventFilter(from_ms=T0).keeps("e", "acme", T0 - 1)
    assert EventFilter(to_ms=T0).keeps("e", "acme", 0)
    assert not EventFilter(to_ms=T0).keeps("e", "acme", T0)


def test_filter_keeps_events_without_a_timestamp_whatever_the_window() -> None:
    # The range was found from timestamps already; a record without one is not second-guessed.
    keep = EventFilter(from_ms=T0, to_ms=T0 + 1)
    assert keep.keeps("e", "acme", None)
    # The tenant still applies.
    assert not EventFilter(tenants=frozenset({"kids"}), from_ms=T0).keeps("e", "acme", None)


def test_sampling_is_fixed_by_the_event_id() -> None:
    keep = EventFilter(sample=0.5)
    ids = [f"ev-{i}" for i in range(500)]
    first = [keep.keeps(i, "acme", None) for i in ids]
    # Tenant and timestamp play no part in the draw: a resumed run keeps the same events.
    again = [EventFilter(sample=0.5).keeps(i, "kids", T0) for i in ids]
    assert first == again
    assert all(0.0 <= sampled(i) < 1.0 for i in ids)


def test_sampling_keeps_about_the_asked_fraction() -> None:
    ids = [f"ev-{i}" for i in range(10_000)]
    for rate in (0.01, 0.1, 0.5, 0.9):
        kept = sum(EventFilter(sample=rate).keeps(i, "acme", None) for i in ids)
        assert abs(kept / len(ids) - rate) <= 0.02, (rate, kept)


def test_a_larger_sample_keeps_a_superset() -> None:
    ids = [f"ev-{i}" for i in range(2000)]
    small = {i for i in ids if EventFilter(sample=0.1).keeps(i, "acme", None)}
    large = {i for i in ids if EventFilter(sample=0.3).keeps(i, "acme", None)}
    assert small < large


def test_sampling_never_fails_on_odd_text() -> None:
    assert 0.0 <= sampled("\ud800-odd") < 1.0
    assert EventFilter(sample=1.0).keeps("\ud800", "acme", None)


# -- parse_window ------------------------------------------------------------------------------


def test_a_window_is_parsed_as_given() -> None:
    later = "2026-11-29T03:00:00Z"
    assert parse_window("2026-11-29T02:00:00Z", later, T0) == (T0, T0 + 3_600_000)
    assert parse_window(None, None, T0) == (None, None)
    assert parse_window(None, later, T0) == (None, T0 + 3_600_000)


def test_without_to_the_window_ends_now_so_from_may_be_now_but_not_later() -> None:
    assert parse_window("2026-11-29T02:00:00Z", None, T0) == (T0, None)
    with pytest.raises(ConfigError) as info:
        parse_window("2026-11-29T02:00:00.001Z", None, T0)
    assert str(info.value) == (
        "--from: 2026-11-29T02:00:00.001Z is in the future (the range ends now)"
    )


def test_a_future_window_with_its_own_end_is_left_to_the_lookup() -> None:
    """Nothing is in it yet, but it is a range: the run finds it empty."""
    assert parse_window("2030-01-01T00:00:00Z", "2030-01-02T00:00:00Z", T0)[0] is not None


def test_to_must_be_later_than_from() -> None:
    with pytest.raises(ConfigError, match=r"^--to: must be later than --from$"):
        parse_window("2026-11-29T02:00:00Z", "2026-11-29T02:00:00Z", T0)
