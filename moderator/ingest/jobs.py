"""What the consume loop hands its events to, how a job reports back, and the loop's counts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from moderator.emit.records import OutRecord
from moderator.ingest.tracker import TP
from moderator.pipeline.job import Job

# Called once per job with its output records, or None when the job was abandoned (a replay
# stopping before it started the job): its offset then stays uncommitted.
JobDone = Callable[[list[OutRecord] | None], None]


class JobProcessor(Protocol):
    """What the loop hands events to: the service's Processor, or a replay's wrapper of one."""

    @property
    def buffered_bytes(self) -> int: ...
    def submit(self, job: Job, done: JobDone) -> None: ...


@dataclass
class LoopStats:
    messages: int = 0
    events: int = 0
    dlq: int = 0
    accept_errors: int = 0  # messages dead-lettered by the intake's safety net (a bug)
    skipped_records: int = 0
    checkpoints: int = 0
    aborted: int = 0
    producers_replaced: int = 0  # after a call that never returned (moderator/ingest/stuck.py)
    produced: int = 0
    committed_messages: int = 0
    pauses: int = 0


@dataclass
class MessageWork:
    """One consumed message: its events complete independently; the offset completes with all."""

    outputs: list[list[OutRecord] | None]
    left: int


@dataclass
class Completion:
    """A job's end as the loop collects it: its message's place, and its records (None: it
    was abandoned or dropped)."""

    tp: TP
    generation: int
    offset: int
    index: int
    records: list[OutRecord] | None = field(default_factory=list)
