"""`moderator dev-stack` run as a separate process, for the tests that use it as a user would."""

from __future__ import annotations

import queue
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _lines(stream: IO[str]) -> queue.Queue[str | None]:
    """Read a pipe on a thread so the test can wait with a deadline; None at its end."""
    out: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            out.put(line.rstrip("\n"))
        out.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return out


@contextmanager
def dev_stack(
    tmp_path: Path, *args: str, timeout_s: float = 30
) -> Iterator[tuple[subprocess.Popen[str], list[str], Path]]:
    """`moderator dev-stack ARGS`, in `tmp_path`, until the block ends: (process, stdout lines
    before `ready`, stderr file). Killed on the way out if still running."""
    stderr_path = tmp_path / "dev-stack.stderr"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moderator.cli.main", "dev-stack", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=tmp_path,
        )
    assert proc.stdout is not None
    lines = _lines(proc.stdout)
    head: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line is None or line == "ready":
                head.append(line or "<eof>")
                break
            head.append(line)
        assert head and head[-1] == "ready", (head, stderr_path.read_text())
        yield proc, head[:-1], stderr_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()


def exported(lines: list[str]) -> dict[str, str]:
    """The variables of `export NAME=VALUE` lines (shell-quoted values)."""
    env: dict[str, str] = {}
    for line in lines:
        words = shlex.split(line)
        assert len(words) == 2 and words[0] == "export", line
        name, _, value = words[1].partition("=")
        env[name] = value
    return env
