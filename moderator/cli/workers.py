"""`moderator run --workers N`: N consumer processes in one consumer group, under a supervisor.

One process cannot use more than about one core of Python (the GIL). With `--workers N` the
command becomes a supervisor that starts N worker processes, each `moderator run` with the same
settings except:

- `instance_id` is `{instance_id}-w{k}` (k = 0..N-1), so each has its own Kafka `client.id` and
  transactional id (`moderator-{group_id}-{instance_id}-w{k}`; an explicit
  `kafka.transactional_id` gets the same `-w{k}` suffix): no worker fences another;
- worker k serves /metrics, /healthz and /readyz on `http.port + k` (nothing when `http.port` is
  0). The supervisor serves nothing: probes on `http.port` reach worker 0.

The workers share nothing but the broker, S3 and the engine server: each has its own consumer
(the group spreads the partitions over them), producer, engine client, verdict cache and
policies. An in-process engine (transformers, lmdeploy) is loaded once per worker.

The supervisor checks the settings, the engine's files, the broker and (with
`kafka.create_topics`) the topics once, then starts the workers. SIGTERM or SIGINT is forwarded
to every worker, which drains as a single process does; a worker still running
`flow.drain_grace_s + STOP_MARGIN_S` seconds later is killed. Exit 0 when every worker stopped
cleanly. When a worker exits on its own (a crash, a fenced producer, a configuration error),
the supervisor stops the others the same way and exits with that worker's code (1 if it was
0 or a signal): the orchestrator restarts the whole group, as it would restart one process.
A worker whose supervisor is gone (killed with SIGKILL) stops by itself (drains, exits).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from moderator.errors import ConfigError
from moderator.ingest.checkpoint import stop_budget_s
from moderator.obs.http import check_port
from moderator.settings import Settings

log = structlog.get_logger("moderator.workers")

MAX_WORKERS = 64
STOP_MARGIN_S = 5.0
"""Beyond a worker's own stop budget: its start-up, when the stop came while it started."""
POLL_S = 0.2
PARENT_CHECK_S = 1.0


def worker_settings(settings: Settings, index: int) -> Settings:
    """The settings of worker `index`: its own instance id (hence client and transactional id)
    and its own observability port; everything else as given."""
    if index < 0:
        raise ValueError("worker index must be >= 0")
    suffix = f"-w{index}"
    kafka = settings.kafka
    if kafka.transactional_id is not None:
        kafka = kafka.model_copy(update={"transactional_id": kafka.transactional_id + suffix})
    http = settings.http
    if http.port:
        http = http.model_copy(update={"port": http.port + index})
    return settings.model_copy(
        update={"instance_id": settings.instance_id + suffix, "kafka": kafka, "http": http}
    )


def check_workers(settings: Settings, workers: int) -> None:
    """ConfigError (exit 2) when `workers` is out of range or their ports would be, or one of
    those ports cannot be listened on now: found before any worker joins the group (a worker
    that exits on its port would make the others rebalance, then stop)."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be between 1 and {MAX_WORKERS}, not {workers}")
    last = settings.http.port + workers - 1
    if settings.http.port and last > 65535:
        raise ConfigError(
            f"--workers {workers}: worker ports http.port..{last} go beyond 65535 "
            "(lower http.port, or set it to 0 to turn the endpoints off)"
        )
    for index in range(workers):
        check_port(worker_settings(settings, index).http)


def watch_parent(stop: threading.Event, interval_s: float = PARENT_CHECK_S) -> threading.Thread:
    """In a worker: set `stop` once the process that started it is gone (re-parented)."""
    parent = os.getppid()

    def watch() -> None:
        while not stop.wait(interval_s):
            if os.getppid() != parent:
                log.warning("supervisor_gone", parent_pid=parent)
                stop.set()
                return

    thread = threading.Thread(target=watch, name="supervisor-watch", daemon=True)
    thread.start()
    return thread


@dataclass
class _Worker:
    index: int
    instance_id: str
    process: subprocess.Popen[bytes]


class Supervisor:
    """Starts the workers, forwards a stop to them and reports how they ended.

    `command(k)` is worker k's argv. `grace_s`: how long stopping workers may take before they
    are killed.
    """

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        instance_ids: Sequence[str],
        *,
        grace_s: float,
        env: dict[str, str] | None = None,
    ) -> None:
        self._command = command
        self._instance_ids = list(instance_ids)
        self._grace_s = grace_s
        self._env = env
        self._workers: list[_Worker] = []

    def run(self, stop: threading.Event) -> int:
        """Run the workers until `stop` is set or one exits; the exit code for the command."""
        try:
            for index, instance_id in enumerate(self._instance_ids):
                process = subprocess.Popen(list(self._command(index)), env=self._env)
                self._workers.append(_Worker(index, instance_id, process))
                log.info("worker_started", worker=instance_id, pid=process.pid)
            failed = self._wait(stop)
        except BaseException:
            self._stop_all()
            raise
        codes = self._stop_all()
        if failed is not None:
            code = failed.process.returncode
            return code if code is not None and code > 0 else 1
        clean = all(_stopped_cleanly(code) for code in codes)
        return 0 if clean else 1

    def _wait(self, stop: threading.Event) -> _Worker | None:
        """Until a stop is asked for (None) or a worker exits on its own (that worker)."""
        while not stop.is_set():
            for worker in self._workers:
                code = worker.process.poll()
                if code is not None:
                    log.error(
                        "worker_exited",
                        worker=worker.instance_id,
                        pid=worker.process.pid,
                        code=code,
                        detail="stopping the other workers; exiting for a restart",
                    )
                    return worker
            stop.wait(POLL_S)
        log.info("stopping_workers", workers=len(self._workers), grace_s=self._grace_s)
        return None

    def _stop_all(self) -> list[int]:
        """SIGTERM every running worker, wait up to the grace, then SIGKILL; the exit codes."""
        for worker in self._workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._grace_s
        codes: list[int] = []
        for worker in self._workers:
            try:
                code = worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker_killed", worker=worker.instance_id, pid=worker.process.pid)
                worker.process.kill()
                code = worker.process.wait()
            codes.append(code)
            log.info("worker_stopped", worker=worker.instance_id, code=code)
        return codes


def _stopped_cleanly(code: int) -> bool:
    """0, or killed by our SIGTERM before it installed its handler (still starting: it had
    taken no work yet)."""
    return code in (0, -signal.SIGTERM)


def worker_argv(
    index: int,
    *,
    config: Path | None,
    engine: str | None,
    model: str | None,
    policies: Path | None,
    http_port: int | None,
    debug: bool,
) -> list[str]:
    """Worker `index`'s command line: `moderator run` with the supervisor's own flags."""
    argv = [sys.executable, "-m", "moderator.cli.main"]
    if debug:
        argv.append("--debug")
    argv += ["run", "--worker-index", str(index)]
    for flag, value in (
        ("--config", config),
        ("--engine", engine),
        ("--model", model),
        ("--policies", policies),
        ("--http-port", http_port),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def supervise(
    settings: Settings,
    workers: int,
    stop: threading.Event,
    command: Callable[[int], Sequence[str]],
) -> int:
    """Run `workers` worker processes until `stop`; the command's exit code."""
    ids = [worker_settings(settings, k).instance_id for k in range(workers)]
    grace = stop_budget_s(settings.flow.drain_grace_s, settings.kafka.transaction_timeout_ms)
    grace += STOP_MARGIN_S
    log.info("supervising", workers=workers, instance_ids=ids, stop_grace_s=grace)
    return Supervisor(command, ids, grace_s=grace).run(stop)
