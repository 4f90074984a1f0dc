"""A simulated continuous-batching inference server behind the devstack OpenAI test server.

`BatchingSimulator` is a completion backend that behaves like lmdeploy's, vLLM's or SGLang's
scheduler seen from outside: `slots` requests run together; one admitted while b run (itself
included) takes `alpha_s + beta_s * b` seconds; the rest wait first come, first served. It
measures the mean busy slots, the requests served and the ceiling (every slot always busy).
`jitter`, `slow_rate`/`slow_factor`, `error_rate` (HTTP 500) and `max_queue` (HTTP 429; unset
models vLLM's unbounded queue) make it less regular. `SimulatorProcess` runs it in a child
process, so its CPU time does not compete with the client for the interpreter lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from PIL.Image import Image

from moderator.dev.openai.protocol import Completion, CompletionParams, RequestRejected

# A valid guard verdict (what the `openai` engine parses): every simulated answer says it.
VERDICT = '{"rating": "Safe", "category": "NA: None applying", "rationale": "Simulated."}'
_STOP_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class BatchingModel:
    """How the simulated server serves: slots, service time and faults."""

    slots: int = 16
    alpha_s: float = 0.1  # fixed cost of a request
    beta_s: float = 0.004  # added per request running beside it (itself included)
    jitter: float = 0.0  # each service time is scaled by uniform(1 - jitter, 1 + jitter)
    slow_rate: float = 0.0  # share of requests that take slow_factor times as long
    slow_factor: float = 5.0
    error_rate: float = 0.0  # share answered HTTP 500 at once, without taking a slot
    max_queue: int | None = None  # waiting requests beyond which a new one gets HTTP 429
    seed: int = 0

    def __post_init__(self) -> None:
        if self.slots < 1 or self.alpha_s < 0 or self.beta_s < 0 or self.alpha_s + self.beta_s <= 0:
            raise ValueError("slots must be at least 1 and alpha_s + beta_s positive")
        if not 0 <= self.jitter < 1 or self.slow_factor < 1:
            raise ValueError("jitter must be in [0, 1) and slow_factor at least 1")
        if not 0 <= self.slow_rate <= 1 or not 0 <= self.error_rate < 1:
            raise ValueError("slow_rate must be in [0, 1] and error_rate in [0, 1)")
        if self.max_queue is not None and self.max_queue < 0:
            raise ValueError("max_queue must not be negative")

    def service_s(self, running: int) -> float:
        """The nominal service time of a request admitted while `running` run (itself
        included)."""
        return self.alpha_s + self.beta_s * running

    @property
    def mean_service_full_s(self) -> float:
        """The mean service time with every slot busy, slow requests included."""
        return self.service_s(self.slots) * (1 + self.slow_rate * (self.slow_factor - 1))

    @property
    def ceiling(self) -> float:
        """Requests per second with every slot always busy: what no client can exceed."""
        return self.slots / self.mean_service_full_s


@dataclasses.dataclass(frozen=True)
class SimulatorStats:
    """What the simulator saw since its last reset. `span_s`: first admission to last
    completion (the time it had work); over it, `occupancy` (mean share of busy slots),
    `mean_waiting` (mean requests waiting) and `rate` (served per second). `cpu_s`, `wall_s`:
    the serving process's CPU and wall time since the reset (0 in-process). `since(earlier)`:
    the figures between two snapshots of one measurement."""

    slots: int
    ceiling: float
    served: int
    errors: int  # answered 500 by error_rate
    rejected: int  # answered 429 by max_queue
    busy_slot_s: float
    waiting_s: float  # request-seconds spent waiting for a slot
    span_s: float
    max_running: int
    max_waiting: int
    cpu_s: float = 0.0
    wall_s: float = 0.0

    @property
    def occupancy(self) -> float:
        return self.busy_slot_s / (self.slots * self.span_s) if self.span_s > 0 else 0.0

    @property
    def mean_waiting(self) -> float:
        return self.waiting_s / self.span_s if self.span_s > 0 else 0.0

    @property
    def rate(self) -> float:
        return self.served / self.span_s if self.span_s > 0 else 0.0

    def since(self, earlier: SimulatorStats) -> SimulatorStats:
        """The figures between `earlier` and this snapshot (maxima and CPU left as they are)."""
        return dataclasses.replace(
            self,
            served=self.served - earlier.served,
            errors=self.errors - earlier.errors,
            rejected=self.rejected - earlier.rejected,
            busy_slot_s=self.busy_slot_s - earlier.busy_slot_s,
            waiting_s=self.waiting_s - earlier.waiting_s,
            span_s=self.span_s - earlier.span_s,
        )

    @property
    def ratio(self) -> float:
        """Served per second over the ceiling."""
        return self.rate / self.ceiling

    @property
    def cores_busy(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


class _Ticket:
    """A waiting request: started (with its end time) by the request that frees its slot."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.ends = 0.0


class BatchingSimulator:
    """Implements CompletionBackend: slots, a first-come queue, service time by batch size.

    Called from the test server's handler threads; each request's thread sleeps until its
    service ends. `clock` and `sleep` are for tests.
    """

    def __init__(
        self,
        model: BatchingModel,
        *,
        text: str = VERDICT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.model = model
        self._text = text
        self._clock = clock
        self._sleep = sleep
        self._rng = random.Random(model.seed)
        self._lock = threading.Lock()
        self._waiting: deque[_Ticket] = deque()  # in arrival order
        self._running = 0
        self._last_t = clock()
        self._busy = 0.0  # slot-seconds since the reset
        self._queued = 0.0  # request-seconds spent waiting since the reset
        self._served = self._errors = self._rejected = 0
        self._max_running = self._max_waiting = 0
        self._first_admit: float | None = None
        self._last_done = self._last_t
        self._reset_locked()

    def reset(self) -> None:
        """Start a new measurement: the figures count from here (requests running go on)."""
        with self._lock:
            self._reset_locked()

    def stats(self) -> SimulatorStats:
        with self._lock:
            self._advance(self._clock())
            end = self._last_done if self._running == 0 else self._clock()
            span = end - self._first_admit if self._first_admit is not None else 0.0
            return SimulatorStats(
                slots=self.model.slots,
                ceiling=self.model.ceiling,
                served=self._served,
                errors=self._errors,
                rejected=self._rejected,
                busy_slot_s=self._busy,
                waiting_s=self._queued,
                span_s=max(0.0, span),
                max_running=self._max_running,
                max_waiting=self._max_waiting,
            )

    def complete(self, prompt: str, image: Image, params: CompletionParams) -> Completion:
        ends = self._admit()
        try:
            left = ends - self._clock()
            if left > 0:
                self._sleep(left)
        finally:
            self._leave()
        return Completion(text=self._text, prompt_tokens=len(prompt) // 4, completion_tokens=24)

    # -- scheduling ------------------------------------------------------------------------

    def _admit(self) -> float:
        """Wait for a slot in arrival order; when this request's service ends (clock time).

        A request that finds a slot free starts at once. One that waits is started by the
        request leaving its slot, at that moment, as a batching scheduler fills a freed slot at
        its next step: how soon this thread wakes up does not delay it."""
        model = self.model
        with self._lock:
            if self._rng.random() < model.error_rate:
                self._errors += 1
                raise RequestRejected(
                    "simulated server error", status=HTTPStatus.INTERNAL_SERVER_ERROR
                )
            now = self._clock()
            self._advance(now)  # the queue is about to change
            if not self._waiting and self._running < model.slots:
                return self._start_locked(now)
            if model.max_queue is not None and len(self._waiting) >= model.max_queue:
                self._rejected += 1
                raise RequestRejected(
                    "too many requests waiting",
                    status=HTTPStatus.TOO_MANY_REQUESTS,
                    retry_after=1,
                )
            ticket = _Ticket()
            self._waiting.append(ticket)
            self._max_waiting = max(self._max_waiting, len(self._waiting))
        ticket.started.wait()
        return ticket.ends

    def _start_locked(self, now: float) -> float:
        """Take a slot at `now`; when the service ends."""
        self._running += 1
        self._max_running = max(self._max_running, self._running)
        if self._first_admit is None:
            self._first_admit = now
        model = self.model
        service = model.service_s(self._running)
        if model.jitter:
            service *= self._rng.uniform(1 - model.jitter, 1 + model.jitter)
        if self._rng.random() < model.slow_rate:
            service *= model.slow_factor
        return now + service

    def _leave(self) -> None:
        with self._lock:
            now = self._clock()
            self._advance(now)
            self._running -= 1
            self._served += 1
            self._last_done = now
            if self._waiting:
                ticket = self._waiting.popleft()
                ticket.ends = self._start_locked(now)
                ticket.started.set()

    def _advance(self, now: float) -> None:
        """Add the busy slot-seconds and waiting request-seconds since the last change (lock
        held)."""
        if self._first_admit is not None:
            elapsed = max(0.0, now - self._last_t)
            self._busy += self._running * elapsed
            self._queued += len(self._waiting) * elapsed
        self._last_t = now

    def _reset_locked(self) -> None:
        now = self._clock()
        self._last_t = now
        self._busy = 0.0
        self._queued = 0.0
        self._served = 0
        self._errors = 0
        self._rejected = 0
        self._max_running = self._running
        self._max_waiting = len(self._waiting)
        # Requests still running keep the slots busy from now on.
        self._first_admit = now if self._running else None
        self._last_done = now


class SimulatorProcess:
    """The test server with a BatchingSimulator, in a child process of its own (`python -m
    moderator.dev.openai.simulator MODEL_JSON`). Start it, point the client at `url`, `reset`
    before a measured run and read `stats` after it; `stop` ends the process. The child reads
    one command a line on stdin (reset, stats, stop) and answers one JSON line on stdout; it
    ends when its stdin closes, so it cannot outlive its parent for long."""

    def __init__(self, model: BatchingModel, *, served_model: str = "sim-guard") -> None:
        self.model = model
        self.served_model = served_model
        self._url: str | None = None
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def start(self) -> SimulatorProcess:
        spec = json.dumps({"model": dataclasses.asdict(self.model), "served": self.served_model})
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            self._url = str(self._read()["url"])
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the simulated server is not running")
        return self._url

    def reset(self) -> None:
        self._ask("reset")

    def stats(self) -> SimulatorStats:
        return SimulatorStats(**self._ask("stats"))

    def stop(self) -> None:
        process, self._process, self._url = self._process, None, None
        if process is None:
            return
        with contextlib.suppress(OSError):  # the child is gone already
            assert process.stdin is not None
            process.stdin.write("stop\n")
            process.stdin.close()
        try:
            process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ask(self, command: str) -> dict[str, Any]:
        with self._lock:
            if self._process is None or self._process.stdin is None:
                raise RuntimeError("the simulated server is not running")
            self._process.stdin.write(command + "\n")
            self._process.stdin.flush()
            return self._read()

    def _read(self) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the simulated server exited ({self._process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer


def main(argv: list[str] | None = None) -> int:
    """The child process: serve until stdin says stop or closes, answering commands."""
    from moderator.dev.openai.server import OpenAITestServer

    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    simulator = BatchingSimulator(BatchingModel(**spec["model"]))
    server = OpenAITestServer(simulator, model=spec["served"], smoke_test=False).start()
    since_wall, since_cpu = time.monotonic(), time.process_time()

    def answer(value: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    try:
        answer({"url": server.url})
        for line in sys.stdin:
            command = line.strip()
            if command == "reset":
                simulator.reset()
                since_wall, since_cpu = time.monotonic(), time.process_time()
                answer({})
            elif command == "stats":
                cpu_s, wall_s = time.process_time() - since_cpu, time.monotonic() - since_wall
                stats = dataclasses.replace(simulator.stats(), cpu_s=cpu_s, wall_s=wall_s)
                answer(dataclasses.asdict(stats))
            else:
                break
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
