"""The offset ranges a replay reads: `--offsets` clamped to what a partition holds, with a note
for people on each range that was changed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError

from moderator.errors import ConfigError
from moderator.replay.ranges import clamp_note, find_ranges, output_ends
from moderator.replay.request import OffsetRange

TOPIC = "uploads"


@pytest.mark.parametrize(
    ("asked", "low", "high", "note"),
    [
        (OffsetRange(2, 0, 8), 0, 8, None),
        (OffsetRange(2, 3, 5), 0, 8, None),
        (OffsetRange(2, 4, 4), 0, 8, None),  # empty as asked
        (
            OffsetRange(2, 0, 999),
            0,
            8,
            "--offsets 2:0-999 ends past the end of partition 2 (8); replaying 2:0-8",
        ),
        (
            OffsetRange(0, 1, 5),
            3,
            8,
            "--offsets 0:1-5 starts before the earliest offset of partition 0 (3); replaying 0:3-5",
        ),
        (
            OffsetRange(0, 1, 50),
            3,
            8,
            "--offsets 0:1-50 starts before the earliest offset of partition 0 (3) and ends "
            "past the end of partition 0 (8); replaying 0:3-8",
        ),
        (
            OffsetRange(1, 10, 20),
            0,
            8,
            "--offsets 1:10-20 starts at or past the end of partition 1 (8); nothing is replayed",
        ),
        (
            OffsetRange(1, 0, 2),
            5,
            8,
            "--offsets 1:0-2 ends before the earliest offset of partition 1 (5; older ones were "
            "deleted); nothing is replayed",
        ),
    ],
)
def test_clamp_note(asked: OffsetRange, low: int, high: int, note: str | None) -> None:
    assert clamp_note(asked, low, high) == note


class Partitions:
    """Just enough of a consumer for the lookups: partitions and their watermarks."""

    def __init__(self, marks: dict[int, tuple[int, int]]) -> None:
        self.marks = marks

    def list_topics(self, topic: str, timeout: float = -1) -> Any:
        found = SimpleNamespace(error=None, partitions=dict.fromkeys(self.marks))
        return SimpleNamespace(topics={topic: found})

    def get_watermark_offsets(self, tp: Any, timeout: float = -1) -> tuple[int, int]:
        return self.marks[tp.partition]


def test_find_ranges_clamps_offsets_and_says_so() -> None:
    asked = (OffsetRange(0, 0, 5), OffsetRange(2, 0, 999))
    ranges, how, notes = find_ranges(
        Partitions({0: (0, 10), 1: (0, 10), 2: (0, 8)}),
        TOPIC,
        offsets=asked,
        from_ms=None,
        to_ms=None,
        now_ms=0,
        timeout_s=1,
    )
    assert ranges == (OffsetRange(0, 0, 5), OffsetRange(2, 0, 8))
    assert how == "offsets"
    assert notes == ["--offsets 2:0-999 ends past the end of partition 2 (8); replaying 2:0-8"]


def test_the_whole_topic_has_no_notes() -> None:
    ranges, how, notes = find_ranges(
        Partitions({0: (2, 10)}),
        TOPIC,
        offsets=None,
        from_ms=None,
        to_ms=None,
        now_ms=0,
        timeout_s=1,
    )
    assert (ranges, how, notes) == ((OffsetRange(0, 2, 10),), "whole topic", [])


class NoTopic:
    """A cluster without the topic asked for, as librdkafka answers a metadata request."""

    def list_topics(self, topic: str, timeout: float = -1) -> Any:
        missing = SimpleNamespace(error=KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART), partitions={})
        return SimpleNamespace(topics={topic: missing})


def test_a_missing_uploads_topic_is_a_configuration_error_naming_the_setting() -> None:
    with pytest.raises(ConfigError) as caught:
        find_ranges(
            NoTopic(), "nosuch", offsets=None, from_ms=None, to_ms=None, now_ms=0, timeout_s=1
        )
    assert str(caught.value) == "kafka.topics.uploads: topic nosuch does not exist on the cluster"


def test_a_missing_output_topic_has_no_results_yet() -> None:
    assert output_ends(NoTopic(), "moderation.replay", 1) == {}
