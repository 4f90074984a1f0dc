"""Bounded verdict cache keyed by (image sha256, model input, model): see pipeline/coalesce.py.

An entry holds the model's assessments of the image's frames and the facts read when it was
decoded (format, size), so that a hit is answered before the object is decoded at all.

Memory: at most `cache.max_entries` entries (0 disables the cache). An entry of a still image
takes about 1.3 KB with a 300-character rationale and 2.2 KB with a 1,200-character one (the
`engine.generation.rationale_max_chars` default); an animation holds one assessment per sampled
frame (at most `fetch.max_frames`). `bench/coalesce.py` measures these figures.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from moderator.events.verdict import Assessment
from moderator.pipeline.assemble import ObjectFacts

CacheKey = tuple[str, str, str]
Judgement = tuple[Assessment, ...]  # the model's assessment of each sampled frame, in order


@dataclass(frozen=True, slots=True)
class Judged:
    """What the cache keeps of a judged image: each frame's assessment, and its facts (sha256,
    format, size; no etag: that belongs to each object holding these bytes)."""

    frames: Judgement
    facts: ObjectFacts


class VerdictCache:
    """LRU map from a judgement key to the model's assessments of the image's frames.

    Only successful model assessments are stored: errors are never cached, so a transient
    failure is retried on the next upload. Decisions are not stored: each event decides under
    its own policy from the assessments, so entries are shared by every policy whose key is the
    same.
    """

    def __init__(self, max_entries: int, *, per_tenant: bool = False) -> None:
        """`per_tenant` (`cache.scope: tenant`): keys carry the tenant id, so that no tenant's
        event is answered from, or waits on, another tenant's engine call."""
        self._max = max_entries
        self.per_tenant = per_tenant
        self._items: OrderedDict[CacheKey, Judged] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: CacheKey) -> Judged | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: CacheKey, judged: Judged) -> None:
        if self._max <= 0:
            return
        with self._lock:
            self._items[key] = judged
            self._items.move_to_end(key)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
