"""The object store's readiness, read from its outage state at check and scrape time."""

from __future__ import annotations

from typing import Protocol

from moderator.obs.engine import FAILING_S
from moderator.obs.health import Check, CheckFn
from moderator.obs.metrics import Metrics


class StoreFailing(Protocol):
    """What `moderator.fetch.outage.StoreOutage` tells about the object store."""

    def failing_s(self) -> float: ...


def store_check(store: StoreFailing, metrics: Metrics, failing_s: float = FAILING_S) -> CheckFn:
    """The `s3` readiness check, which also sets `moderator_object_store_ready`: not ready
    while every read has failed for more than `failing_s` (reads then wait for the store)."""

    def check() -> Check:
        failing = store.failing_s()
        ready = failing <= failing_s
        metrics.set("moderator_object_store_ready", 1 if ready else 0)
        if ready and failing:  # failing for a while, not yet for long enough
            limit = f"not ready past {failing_s:.0f} s"
            return Check(True, f"every S3 read has failed for {failing:.0f} s ({limit})")
        if ready:
            return Check(True, "no read failing")
        detail = f"every S3 read has failed for {failing:.0f} s: reads wait for the store"
        return Check(False, detail)

    return check
