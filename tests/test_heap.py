"""The garbage collector's settings for long-running consumers (moderator.heap).

Checked in a child interpreter: freezing the test process's heap would outlive the test.
"""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import gc, json, weakref
from moderator import heap

class Node:
    pass

kept = Node()
kept.self = kept  # a cycle alive at start-up
before = gc.get_freeze_count()
heap.settled(object())
frozen = gc.get_freeze_count()
later = Node()
later.self = later  # a cycle made after start-up
old, new = weakref.ref(kept), weakref.ref(later)
del kept, later
gc.collect()
print(json.dumps({"before": before, "frozen": frozen, "threshold": gc.get_threshold(),
                  "old_cycle_kept": old() is not None, "new_cycle_freed": new() is None}))
"""


def _child() -> dict[str, object]:
    import json

    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=60
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_settle_freezes_the_start_up_heap_and_widens_the_young_generation() -> None:
    from moderator.heap import YOUNG_THRESHOLD

    found = _child()
    assert found["before"] == 0
    assert isinstance(found["frozen"], int) and found["frozen"] > 1000  # the imported modules
    assert found["threshold"] == [YOUNG_THRESHOLD, 10, 10]  # the older generations as they were


def test_cycles_made_after_settling_are_collected_and_frozen_ones_stay() -> None:
    found = _child()
    assert found["new_cycle_freed"] is True
    assert found["old_cycle_kept"] is True  # the price: a start-up cycle is never collected
