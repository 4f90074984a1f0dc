"""CPU time of this process's threads, grouped by what they do (Linux: read from /proc).

`bench/pipeline.py` takes a snapshot when the service starts and one when the last verdict is
seen, and prints the difference per group in µs per event: which thread's Python work (and the
broker client's C threads) a run's CPU went to. A thread's name comes from Python's `threading`
where it has one (the service names its threads: `fetch_3`, `decode_0`, `engine-window-0`, ...),
else from the kernel (librdkafka's `rdk:broker1`); trailing numbers are dropped so that a pool's
threads add up to one group.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from pathlib import Path

_TASKS = Path("/proc/self/task")
_NUMBERED = re.compile(r"[-_]?\d+$")
GROUPS = {
    "fetch": "fetch workers",
    "decode": "decode workers",
    "engine-window": "engine window worker",
    "engine-window-dispatch": "engine window dispatcher",
    "moderator-bench": "consume loop, checkpoints",
    "MainThread": "bench: verdict reader",
}
"""Names of the service's threads (as the bench runs it) and what each group does."""

Snapshot = dict[int, tuple[str, float]]


def available() -> bool:
    """Whether this system gives per-thread CPU times (Linux)."""
    return _TASKS.is_dir()


def snapshot() -> Snapshot:
    """Each live thread's group name and CPU seconds (user + system) so far."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    tick = os.sysconf("SC_CLK_TCK")
    found: Snapshot = {}
    for task in _TASKS.iterdir() if available() else ():
        try:
            text = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        tid = int(task.name)
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        found[tid] = (_group(names.get(tid, comm)), seconds)
    return found


def spent(before: Snapshot, after: Snapshot) -> Counter[str]:
    """CPU seconds per group between two snapshots (threads started in between count whole;
    threads that ended in between are not seen)."""
    total: Counter[str] = Counter()
    for tid, (group, seconds) in after.items():
        earlier = before.get(tid)
        total[group] += seconds - (earlier[1] if earlier and earlier[0] == group else 0.0)
    return total


def _group(name: str) -> str:
    short = _NUMBERED.sub("", name)
    return GROUPS.get(short, short)
