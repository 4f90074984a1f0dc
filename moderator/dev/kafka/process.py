"""Processes of the development Kafka nodes: free ports, starting, stopping, reading their logs.

Nodes are started from one long-lived launcher thread with a parent-death signal (`setpriv
--pdeathsig KILL`, Linux): the kernel kills a node when the thread that started it ends, so a
node outlives neither its ApacheKafka (the thread ends with close()) nor a crashed test run.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from moderator.dev.kafka.config import LOOPBACK, NodePorts


class Launcher:
    """Starts processes from its own thread, which lives until close()."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-launcher")
        setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
        self._prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv is not None else []

    def spawn(self, command: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """Start `command` with stdout and stderr appended to `log`."""
        argv = [*self._prefix, *command]

        def run() -> subprocess.Popen[bytes]:
            with log.open("ab") as out:
                return subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                )

        return self._thread.submit(run).result()

    def close(self) -> None:
        """End the thread: processes it started that still run are killed."""
        self._thread.shutdown(wait=True)


def free_ports(nodes: int, client_port: int = 0) -> list[NodePorts]:
    """Free loopback ports, two per node: all are bound at once so none repeats. A non-zero
    `client_port` is node 0's client port, bound first (OSError when it cannot be)."""
    sockets = []
    try:
        for i in range(2 * nodes):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            if i == 0 and client_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM does
            sock.bind((LOOPBACK, client_port if i == 0 else 0))
        ports = [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()
    return [NodePorts(ports[2 * i], ports[2 * i + 1]) for i in range(nodes)]


def terminate(processes: Sequence[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM every process, then SIGKILL whatever still runs after `grace_s` (at once when
    it is 0)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM if grace_s > 0 else signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as stream:
            stream.seek(0, 2)
            stream.seek(max(stream.tell() - 64 * 1024, 0))
            text = stream.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def last_line(path: Path) -> str:
    """The log's last line with text, Java stack frames skipped, whitespace collapsed and
    clipped: for one-line errors."""
    for line in reversed(tail(path, 200).splitlines()):
        line = " ".join(line.split())
        if line and not line.startswith(("at ", "... ")):
            return line if len(line) <= 300 else line[:297] + "..."
    return ""
