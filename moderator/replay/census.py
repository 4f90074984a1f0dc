"""`--dry-run`: what a replay's range holds, per partition and tenant, without replaying it.

The range is read exactly as a run would read it, and each message parsed and filtered as a
run would (tenant, time window, sample), so the counts are the events a run would re-evaluate.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from moderator.events.parse import MalformedMessage, parse_message
from moderator.events.s3notify import TenantRule
from moderator.replay.plan import RunPlan
from moderator.replay.reader import RangeConsumer


@dataclass
class Census:
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> offsets in range
    messages: Counter[int] = field(default_factory=Counter)
    events: Counter[int] = field(default_factory=Counter)  # kept by the filter
    tenants: Counter[str] = field(default_factory=Counter)  # events kept, by tenant
    in_range: set[str] = field(default_factory=set)  # every tenant with an event, kept or not
    malformed: int = 0
    filtered: int = 0

    def lines(self) -> list[str]:
        """A table for people: one line per partition, then one per tenant. `range size` is the
        count of offsets from the range's start to its end (transaction markers included),
        `messages` the records read, `events` those the filter keeps."""
        out = [f"{'partition':>9}  {'range size':>10}  {'messages':>9}  {'events':>9}"]
        for p in sorted(self.offsets):
            out.append(f"{p:>9}  {self.offsets[p]:>10}  {self.messages[p]:>9}  {self.events[p]:>9}")
        out.append(
            f"{'total':>9}  {sum(self.offsets.values()):>10}  {sum(self.messages.values()):>9}"
            f"  {sum(self.events.values()):>9}"
        )
        out.append("")
        out.append(f"{'tenant':<24}  {'events':>9}")
        for tenant, n in sorted(self.tenants.items()):
            out.append(f"{tenant:<24}  {n:>9}")
        out.append(f"filtered out: {self.filtered}, malformed messages: {self.malformed}")
        return out


def take_census(inner: Any, plan: RunPlan, rule: TenantRule) -> Census:
    """Read the plan's ranges with `inner` (a consumer of the run's group; nothing is
    committed) and count what a run would replay."""
    census = Census(offsets={r.partition: r.end - r.start for r in plan.ranges})
    finished = threading.Event()
    reader = RangeConsumer(inner, plan.uploads_topic, plan.ranges, finished)
    reader.subscribe([plan.uploads_topic])
    keep = plan.event_filter
    while not finished.is_set():
        for msg in reader.consume(500, 0.2):
            if msg.error() is not None:
                continue
            partition = msg.partition()
            census.messages[partition] += 1
            try:
                parsed = parse_message(msg.value(), rule)
            except MalformedMessage:
                census.malformed += 1
                continue
            ts_type, ts = msg.timestamp()
            for event in parsed.events:
                census.in_range.add(event.tenant_id)
                if keep.keeps(event.event_id, event.tenant_id, ts if ts_type else None):
                    census.events[partition] += 1
                    census.tenants[event.tenant_id] += 1
                else:
                    census.filtered += 1
    return census
