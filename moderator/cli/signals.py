"""Process signals for the long-running commands: SIGTERM/SIGINT ask for a graceful stop."""

from __future__ import annotations

import signal
import threading
from typing import Any


def install_stop_handlers() -> threading.Event:
    """SIGTERM/SIGINT set the returned event: the command's loop stops (`run` drains and exits
    0; a replay stops where it stands and exits 1 with the command that resumes it)."""
    stop = threading.Event()

    def handler(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
