"""Long-lived worker threads taking jobs from one queue, several at a time when many wait.

The processor's fetch pool. Compared with a ThreadPoolExecutor it makes no Future per job, wakes
a worker only when one is idle, and lets a worker take a share of a backlog in one lock round
trip (at most `MAX_CHUNK` jobs, so that every worker keeps a share): under load, the hand-offs
per event fall with the backlog, while a lone event is still started at once.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import structlog

log = structlog.get_logger("moderator.pipeline")

Task = Callable[[], None]
MAX_CHUNK = 32
"""The most jobs a worker takes at once."""


class JobPool:
    """Runs submitted tasks on `workers` threads; `close` drops the tasks not yet started.

    `max_chunk`: the most tasks a worker takes at once. 1 where a task may wait long (a decode,
    or a wait for the engine): the tasks behind it in a chunk would wait with it while another
    worker is idle."""

    def __init__(self, workers: int, name: str, max_chunk: int = MAX_CHUNK) -> None:
        if workers < 1 or max_chunk < 1:
            raise ValueError("a job pool needs at least one worker, taking at least one task")
        self._max_chunk = max_chunk
        self._tasks: deque[Task] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._idle = 0
        self._closed = False
        self._workers = workers
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, task: Task) -> None:
        """Queue `task`; after `close` it is dropped."""
        with self._cond:
            if self._closed:
                return
            self._tasks.append(task)
            if self._idle:
                self._cond.notify()

    @property
    def queued(self) -> int:
        """Tasks waiting for a worker."""
        return len(self._tasks)

    def close(self) -> None:
        """Drop the queued tasks and let the workers end once their current tasks return."""
        with self._cond:
            self._closed = True
            self._tasks.clear()
            self._cond.notify_all()

    def _work(self) -> None:
        while (chunk := self._take()) is not None:
            for task in chunk:
                try:
                    task()
                except Exception:  # a task must handle its own errors; never lose the worker
                    log.exception("job_failed")

    def _take(self) -> list[Task] | None:
        with self._cond:
            while not self._tasks:
                if self._closed:
                    return None
                self._idle += 1
                self._cond.wait()
                self._idle -= 1
            if self._closed:
                return None
            n = min(self._max_chunk, max(1, len(self._tasks) // self._workers))
            return [self._tasks.popleft() for _ in range(n)]
