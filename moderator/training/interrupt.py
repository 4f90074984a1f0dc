"""Stopping an engine run on Ctrl-C without ending the process under a running model call.

The engine window's threads are daemons (moderator/engine/window.py). When the process exits
while one of them is inside a model call (torch generation), the interpreter's shutdown can
abort it (`terminate called without an active exception`, SIGABRT) instead of exiting 130.
So on Ctrl-C a run stops submitting, says so in one line, closes the window and waits for the
call in progress to end before the KeyboardInterrupt goes on (exit 130). A second Ctrl-C while
it waits ends the process at once, still with exit 130: `os._exit` skips the shutdown that
would abort.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

from moderator.engine.base import EngineResult
from moderator.engine.window import CLOSED_MESSAGE, EngineWindow
from moderator.errors import ErrorCode

INTERRUPTED = 130
WAIT_S = 24 * 3600.0
"""How long the window may take to end the call in progress: without a real bound (a second
Ctrl-C is the way out of a call that does not end)."""


def stopping_line(label: str) -> str:
    """`moderator: eval: interrupted: stopping after the engine call in progress ...`."""
    return (
        f"moderator: {label}: interrupted: stopping after the engine call in progress "
        "(Ctrl-C again to quit at once)"
    )


def stop_window(
    window: EngineWindow, say: Callable[[str], None], label: str, *, wait_s: float = WAIT_S
) -> None:
    """Say that the run stops, close `window` and wait up to `wait_s` for its engine calls to
    end; a KeyboardInterrupt while waiting ends the process at once (exit 130)."""
    say(stopping_line(label))
    try:
        window.close(timeout=wait_s)
    except KeyboardInterrupt:
        exit_now()


def cancelled(result: EngineResult) -> bool:
    """A request that a window closed by `stop_window` gave back unsent (engine_error "engine
    window closed"): not a result of the run, and not one of its errors."""
    closed = result.error_code is ErrorCode.ENGINE_ERROR
    return closed and result.error_message == CLOSED_MESSAGE


def exit_now(code: int = INTERRUPTED) -> None:
    """Flush stdout and stderr and end the process with `code`, without the interpreter's
    shutdown (which would wait on, or abort under, the engine's threads)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
