"""`moderator dev-stack`: run the embedded broker and S3 server until SIGTERM or SIGINT.

stdout carries only the contract: one `export NAME=value` line per variable, then `ready`.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from moderator.devstack.stack import DevStackError, EmbeddedStack

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def cmd_dev_stack(buckets: Sequence[str] = ("uploads",)) -> int:
    """Start the stack, print its environment and `ready`, serve until a signal; exit code.

    Must run on the main thread (it installs signal handlers, restored on return).
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in _SIGNALS}
    try:
        try:
            stack = EmbeddedStack(buckets=buckets).start()
        except DevStackError as exc:
            print(f"error: dev-stack: {exc}", file=sys.stderr)
            return 1
        try:
            lines = [f"export {name}={shlex.quote(value)}" for name, value in stack.env().items()]
            sys.stdout.write("\n".join([*lines, "ready"]) + "\n")
            sys.stdout.flush()
            # A timed wait keeps the main thread responsive to signals on every platform.
            while not stop.wait(0.5):
                pass
        finally:
            stack.stop()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(cmd_dev_stack())
