"""The garbage collector's settings for a long-running consumer (`run`, its workers, `replay`).

CPython's cyclic collector runs whenever allocations outnumber deallocations by a threshold,
and a full collection walks every tracked object. After start-up a consumer holds a large heap
that never becomes garbage (imported modules, pydantic's schemas, botocore's service models,
the policies), and each event allocates a few hundred short-lived objects. With the defaults,
the in-memory pipeline spent about a tenth of its CPU time in the collector, most of it in
full collections over the start-up heap (docs/performance.md, "The garbage collector").
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Allocations between two collections of the youngest generation (CPython's default: 700).
An event's objects mostly die by reference counting before the next one; the collector is
for cycles, which the hot path does not make."""


def settle() -> None:
    """Collect once, move everything alive out of the collector's sight for good (gc.freeze),
    and collect the youngest generation less often. Call it once, when start-up is over.

    Frozen objects are still freed when their last reference goes; only a cycle among them is
    never collected, which for start-up objects means at most what a policy reload replaces."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)


def settled(_built: object) -> None:
    """`settle`, as an `on_built` callback: once the service's pipeline is built."""
    settle()
