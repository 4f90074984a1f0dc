"""`moderator run --pin-cpus`: each consumer process on one CPU of its own.

A process's Python threads (the consume loop, the fetch workers, the engine window) take turns
at the interpreter lock. On different cores every turn moves the lock, and what the thread
touches, from one core's caches to another's; on one core it is a context switch. The
zero-latency pipeline does the same work with about a third less CPU when its process is
pinned to one CPU (docs/performance.md, "Pinned processes").

Only where the CPUs are the pod's alone: a pinned process never runs on another CPU, however
busy its own is. The CPUs are the ones this process may run on (`os.sched_getaffinity`, which
reflects a container's cpuset), in ascending order: worker k gets the k-th.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import structlog

from moderator.errors import ConfigError

log = structlog.get_logger("moderator.workers")

_TASKS = Path("/proc/self/task")


def usable_cpus() -> list[int]:
    """The CPUs this process may run on, ascending; ConfigError where that cannot be set."""
    if not hasattr(os, "sched_getaffinity") or not hasattr(os, "sched_setaffinity"):
        raise ConfigError("--pin-cpus needs a Linux host: this platform cannot pin a process")
    return sorted(os.sched_getaffinity(0))


def cpus_for(workers: int, usable: Sequence[int]) -> list[int]:
    """One CPU per worker, worker k on the k-th usable one; ConfigError when there are fewer
    CPUs than workers (two pinned to one CPU would only slow each other)."""
    if workers > len(usable):
        raise ConfigError(
            f"--pin-cpus with {workers} consumer process(es): this process may run on "
            f"{len(usable)} CPU(s) ({describe(usable)}); use --workers {len(usable)} or fewer"
        )
    return list(usable[:workers])


def pin_process(cpu: int) -> None:
    """Every thread of this process, and every thread it starts later, on `cpu` alone."""
    try:
        os.sched_setaffinity(0, {cpu})  # this thread: the ones it starts inherit it
        for tid in _thread_ids():
            try:
                os.sched_setaffinity(tid, {cpu})
            except ProcessLookupError:  # the thread ended meanwhile
                continue
    except OSError as exc:
        raise ConfigError(f"--pin-cpus: cannot pin this process to CPU {cpu}: {exc}") from exc
    log.info("cpu_pinned", cpu=cpu)


def _thread_ids() -> list[int]:
    try:
        return [int(task.name) for task in _TASKS.iterdir()]
    except OSError:  # no /proc: only the calling thread (pinned above) can be named
        return []


def describe(cpus: Sequence[int]) -> str:
    """`0-3,6` for [0, 1, 2, 3, 6]: runs of consecutive CPUs as ranges."""
    runs: list[tuple[int, int]] = []
    for cpu in cpus:
        if runs and cpu == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], cpu)
        else:
            runs.append((cpu, cpu))
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
