"""The processor's fetch pool: every task runs once, a backlog is shared, close drops the rest."""

from __future__ import annotations

import threading
import time

from moderator.pipeline.jobpool import MAX_CHUNK, JobPool


def test_every_task_runs_exactly_once_across_workers() -> None:
    pool = JobPool(4, "test")
    seen: list[int] = []
    lock = threading.Lock()
    done = threading.Event()

    def task(n: int) -> None:
        with lock:
            seen.append(n)
            if len(seen) == 1000:
                done.set()

    for n in range(1000):
        pool.submit(lambda n=n: task(n))
    assert done.wait(10)
    assert sorted(seen) == list(range(1000))
    pool.close()


def test_a_lone_task_starts_at_once_and_a_raising_task_keeps_the_worker() -> None:
    pool = JobPool(1, "test")
    ran = threading.Event()

    def boom() -> None:
        raise RuntimeError("task bug")

    pool.submit(boom)
    pool.submit(ran.set)
    assert ran.wait(5)
    pool.close()


def test_a_backlog_is_taken_in_shares_and_close_drops_what_has_not_started() -> None:
    pool = JobPool(2, "test")
    gate = threading.Event()
    started: list[str] = []

    def hold() -> None:
        started.append(threading.current_thread().name)
        gate.wait(5)

    pool.submit(hold)
    pool.submit(hold)
    deadline = time.monotonic() + 5
    while len(started) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(set(started)) == 2  # both workers busy
    later: list[int] = []
    for n in range(4 * MAX_CHUNK):
        pool.submit(lambda n=n: later.append(n))
    assert pool.queued == 4 * MAX_CHUNK
    pool.close()
    gate.set()
    time.sleep(0.2)
    assert later == []  # dropped at close, never started
    pool.submit(lambda: later.append(-1))
    time.sleep(0.05)
    assert later == [] and pool.queued == 0


def test_with_chunks_of_one_no_task_waits_behind_a_long_one_while_a_worker_is_free() -> None:
    pool = JobPool(2, "test", max_chunk=1)
    hold, gate = threading.Barrier(3), threading.Event()
    finished: list[int] = []
    for _ in range(2):  # both workers busy while the backlog below is queued
        pool.submit(lambda: hold.wait(10))
    time.sleep(0.05)
    pool.submit(lambda: gate.wait(10))  # the long task, first in the backlog
    for n in range(6):
        pool.submit(lambda n=n: finished.append(n))
    hold.wait(10)  # both workers take from the backlog at once
    deadline = time.monotonic() + 5
    while len(finished) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(finished) == list(range(6))  # in chunks, some would wait for the long one
    gate.set()
    pool.close()
