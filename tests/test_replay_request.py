"""Replay's flag parsing (times, offsets, sample, run ids) and the event filter it implies."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from moderator.audit.read.filters import TIME_EXAMPLES, parse_time_arg
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
    range_text,
    sampled,
    utc_text,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# 2026-11-29T02:00:00Z in milliseconds since the epoch, and that day's 00:00 UTC.
T0 = int(datetime(2026, 11, 29, 2, tzinfo=UTC).timestamp()) * 1000
DAY0 = T0 - 2 * 3_600_000
DAY = 24 * 3_600_000


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
        ("2026-11-29T02:00:00z", T0),
        ("2026-11-29T02:00:00.5z", T0 + 500),
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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-29", DAY0),  # a date alone: 00:00 UTC that day
        ("2026-11-30", DAY0 + DAY),
        ("2026-11-29T02:00:00", T0),  # no offset: UTC
        ("2026-11-29 02:00:00", T0),
        ("2026-11-29t02:00:00", T0),
        ("2026-11-29T02:00:00.250", T0 + 250),
        ("2026-11-29T02:00:00.999999999", T0 + 999),
        ("2026-11-29T02:00", T0),
        ("2026-11-29T02:00Z", T0),
        ("2026-11-29T03:00:00+0100", T0),
    ],
)
@pytest.mark.parametrize("flag", ["--from", "--to"])
def test_parse_time_takes_a_date_alone_and_a_time_without_an_offset_as_utc(
    flag: str, text: str, expected: int
) -> None:
    assert parse_time(flag, text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-29",
        "2026-11-29T02:00:00",
        "2026-11-29 02:00:00.123456789",
        "2026-11-29T03:00:00+01:00",
        "2026-11-29T02:00:00Z",
        "1000-01-01",
        "9999-12-31T23:59:59.999999Z",
        " 2026-11-29T02:00:00Z\n",
    ],
)
def test_parse_time_reads_a_time_as_audit_query_does(text: str) -> None:
    """The same value names the same instant in `audit query --since` and `replay --from`."""
    since = parse_time_arg("since", text)
    assert parse_time("--from", text) == (since - EPOCH) // timedelta(milliseconds=1)


def test_parse_time_is_exact_to_the_millisecond() -> None:
    base = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    for ms in range(1000):
        text = f"{base:%Y-%m-%dT%H:%M:%S}.{ms:03d}Z"
        assert parse_time("--to", text) == int(base.timestamp()) * 1000 + ms
        assert parse_time("--to", text[:-1]) == int(base.timestamp()) * 1000 + ms


@pytest.mark.parametrize(
    "text",
    [
        "1764381600000",  # epoch milliseconds are not ISO 8601
        "yesterday",
        "",
        "2026-11",
        "2026-11-29z",
        "2026-11-29T02:00:00zz",
        "2026-11-29T02:00:00+0100 UTC",
        "10000-01-01",
    ],
)
@pytest.mark.parametrize("flag", ["--from", "--to"])
def test_parse_time_rejects_anything_else_naming_the_flag(flag: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_time(flag, text)
    assert str(info.value) == f"{flag}: not an ISO 8601 time: {text!r} ({TIME_EXAMPLES})"


def test_a_bad_time_is_one_line_with_examples_that_parse() -> None:
    with pytest.raises(ConfigError) as info:
        parse_time("--from", "2026-11-29\n02:00 tomorrow")
    message = str(info.value)
    assert message == (
        "--from: not an ISO 8601 time: '2026-11-29\\n02:00 tomorrow' (e.g. 2026-11-29T02:00:00Z; "
        "a date alone (2026-11-29) is midnight UTC, a time without an offset is UTC)"
    )
    assert "\n" not in message
    # Each example in the line is a value replay takes, meaning what the line says.
    assert parse_time("--from", "2026-11-29T02:00:00Z") == T0
    assert parse_time("--from", "2026-11-29") == DAY0


@pytest.mark.parametrize(
    "text",
    [
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-02-30",
        "2026-11-29T25:00:00Z",
        "2026-11-29T24:00:00",
        "2026-11-29T02:00:00+24:00",
    ],
)
def test_parse_time_rejects_impossible_times_naming_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--to: not an ISO 8601 time: "):
        parse_time("--to", text)


@pytest.mark.parametrize(
    "text", ["0999-12-31T23:59:59Z", "1000-01-01T00:30:00+01:00", "9999-12-31T23:59:59-01:00"]
)
def test_parse_time_rejects_years_outside_1000_to_9999_in_utc(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_time("--from", text)
    assert str(info.value) == (
        f"--from: out of range: {text!r} (use 1000-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999Z)"
    )


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (T0, "2026-11-29T02:00:00Z"),
        (T0 + 7, "2026-11-29T02:00:00.007Z"),
        (DAY0, "2026-11-29T00:00:00Z"),
        (0, "1970-01-01T00:00:00Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (parse_time("--to", "1000-01-01"), "1000-01-01T00:00:00Z"),
        (parse_time("--to", "9999-12-31T23:59:59.999999Z"), "9999-12-31T23:59:59.999Z"),
    ],
)
def test_utc_text_is_the_time_as_read(ms: int, text: str) -> None:
    assert utc_text(ms) == text
    assert parse_time("--from", text) == ms


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
    with pytest.raises(ConfigError, match=r"^--to: must be later than --from$"):
        parse_window("2026-11-29T02:00:00Z", "2026-11-29T01:59:59.999Z", T0)


def test_a_window_of_dates_is_from_midnight_to_midnight_utc() -> None:
    now = DAY0 + 10 * DAY
    assert parse_window("2026-11-29", "2026-11-30", now) == (DAY0, DAY0 + DAY)
    assert parse_window("2026-11-29", None, now) == (DAY0, None)
    assert parse_window(None, "2026-11-30", now) == (None, DAY0 + DAY)
    assert parse_window("2026-11-29", "2026-11-29T02:00:00Z", now) == (DAY0, T0)
    # Either flag takes any form; mixed forms compare as the instants they are.
    mixed = parse_window("2026-11-29T01:00:00", "2026-11-29T03:00:00+01:00", now)
    assert mixed == (T0 - 3_600_000, T0)


def test_a_window_without_offsets_is_utc() -> None:
    window = parse_window("2026-11-29T02:00:00", "2026-11-29T03:00:00", T0 + DAY)
    assert window == (T0, T0 + 3_600_000)


def test_the_same_date_twice_is_refused_saying_how_it_was_read() -> None:
    """A date alone is an instant (00:00 UTC), not a day: `--to` is exclusive, so the same
    date twice is an empty range, refused as the same time twice is."""
    with pytest.raises(ConfigError) as info:
        parse_window("2026-11-29", "2026-11-29", T0)
    assert str(info.value) == "--to: must be later than --from (both are 2026-11-29T00:00:00Z)"
    with pytest.raises(ConfigError) as info:
        parse_window("2026-11-29T03:00:00+01:00", "2026-11-29T02:00:00", T0)
    assert str(info.value) == "--to: must be later than --from (both are 2026-11-29T02:00:00Z)"


def test_a_to_before_from_is_refused_saying_how_they_were_read() -> None:
    with pytest.raises(ConfigError) as info:
        parse_window("2026-11-30", "2026-11-29T23:00:00", T0 + DAY)
    assert str(info.value) == (
        "--to: must be later than --from "
        "(--from is 2026-11-30T00:00:00Z, --to 2026-11-29T23:00:00Z)"
    )


def test_a_future_date_without_to_is_refused_in_utc() -> None:
    """Today's date is its 00:00 UTC, in the past; tomorrow's is in the future."""
    assert parse_window("2026-11-29", None, T0) == (DAY0, None)
    with pytest.raises(ConfigError) as info:
        parse_window("2026-11-30", None, T0)
    assert str(info.value) == "--from: 2026-11-30T00:00:00Z is in the future (the range ends now)"
    with pytest.raises(ConfigError, match=r"^--from: 2026-11-29T02:00:00.001Z is in the future"):
        parse_window("2026-11-29T03:00:00.001+01:00", None, T0)


def test_times_before_1970_are_the_start_of_kafka_time() -> None:
    """No record is older than 1970, and the broker's timestamp lookup reads a negative time
    as a special value (-1: the end, -2: the beginning): the window starts at 0 instead."""
    assert parse_window("1969-12-31T23:59:59.999Z", None, T0) == (0, None)
    assert parse_window("1000-01-01", "2026-11-29", T0) == (0, DAY0)
    assert parse_window(None, "1969-12-31", T0) == (None, 0)
    assert parse_window("1960-01-01", "1965-01-01", T0) == (0, 0)
    with pytest.raises(ConfigError, match=r"^--to: must be later than --from"):
        parse_window("1965-01-01", "1960-01-01", T0)


# -- range_text --------------------------------------------------------------------------------


def test_the_range_shows_its_times_as_read_in_utc() -> None:
    assert range_text(None, "2026-11-29", "2026-11-30") == (
        "2026-11-29T00:00:00Z .. 2026-11-30T00:00:00Z"
    )
    assert range_text(None, "2026-11-29T03:00:00.5+01:00", None) == (
        "2026-11-29T02:00:00.500Z .. the start of the run"
    )
    assert range_text(None, None, "2026-11-29T02:00:00") == (
        "the earliest record .. 2026-11-29T02:00:00Z"
    )
    # The time as asked, even where the window starts at 0.
    assert range_text(None, "1960-01-01", None) == "1960-01-01T00:00:00Z .. the start of the run"
    started = range_text(None, "1960-01-01", None, 1_796_000_000_000)
    assert started == "1960-01-01T00:00:00Z .. the start of the run (2026-11-30T00:53:20Z)"
    assert range_text(None, None, "2026-11-30", 1_796_000_000_000).endswith("2026-11-30T00:00:00Z")


def test_the_range_shows_offsets_or_the_whole_topic() -> None:
    assert range_text("0:1-5", None, None) == "offsets 0:1-5"
    assert range_text(None, None, None) == "the whole topic"
