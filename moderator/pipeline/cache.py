"""Bounded verdict cache keyed by (sha256, policy version, model)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from moderator.events.verdict import Assessment

CacheKey = tuple[str, str, str]


class VerdictCache:
    """LRU map from (object sha256, policy version, model id) to the model's assessment.

    Only successful model assessments are stored: errors are never cached, so a transient
    failure is retried on the next upload.
    """

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._items: OrderedDict[CacheKey, Assessment] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: CacheKey) -> Assessment | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: CacheKey, assessment: Assessment) -> None:
        if self._max <= 0:
            return
        with self._lock:
            self._items[key] = assessment
            self._items.move_to_end(key)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
