"""What the processor is given for each event, and the log context it runs under."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from moderator.emit.records import OutRecord, Trace
from moderator.events.upload import UploadEvent
from moderator.events.verdict import InputCoords
from moderator.obs.log_context import EventLogContext

Done = Callable[[list[OutRecord] | None], None]
"""Called once per job with its verdict and audit records, or with None when the job was
dropped unfinished because it is no longer wanted (`Job.wanted`)."""


@dataclass(frozen=True)
class Job:
    event: UploadEvent
    coords: InputCoords
    trace: Trace
    received: float  # monotonic seconds
    # Whether the job is still wanted (None: always). False once its partition has left this
    # process or was rewound: the job is dropped before its next step (fetch, decode) instead
    # of being judged for a verdict nobody will publish.
    wanted: Callable[[], bool] | None = None

    def unwanted(self) -> bool:
        return self.wanted is not None and not self.wanted()


@dataclass(frozen=True)
class OutputTopics:
    verdicts: str
    audit: str
    source: str  # CloudEvents `ce_source`, stable across instances so consumers can deduplicate


def event_log_context(job: Job) -> EventLogContext:
    """The event's context on every log line while it is processed, its trace id included."""
    return EventLogContext(
        {
            "tenant": job.event.tenant_id,
            "event_id": job.event.event_id,
            "topic": job.coords.topic,
            "partition": job.coords.partition,
            "offset": job.coords.offset,
            "trace_id": job.trace.trace_id,
        }
    )
