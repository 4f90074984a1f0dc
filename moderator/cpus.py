"""How many CPUs this process may run on."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs in this process's affinity mask where the system keeps one, else all of them.
    A container's CPU limit (a cgroup quota) is not counted: it caps time, not CPUs."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity masks (macOS)
        return os.cpu_count() or 1
