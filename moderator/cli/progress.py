"""Progress lines on stderr for the long jobs of the audit trail (`verify`, `retention`,
`query --all`): at most every EVERY_S seconds, and none before the first have passed, so a short
run prints nothing and stdout stays the command's output."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

EVERY_S = 5.0


class Progress:
    """`say` writes its line when EVERY_S seconds have passed since the last one written (or
    since the start); `line` gets the seconds since the start and is only called then."""

    def __init__(self) -> None:
        self._started = self._last = time.monotonic()

    def say(self, line: Callable[[float], str]) -> None:
        now = time.monotonic()
        if now - self._last >= EVERY_S:
            self._last = now
            print(line(now - self._started), file=sys.stderr, flush=True)


def reporter(line: Callable[..., str]) -> Callable[..., None]:
    """A long job's progress callback: each call's arguments, then the seconds since the
    start, go to `line` whenever a Progress line is due."""
    progress = Progress()

    def report(*args: Any) -> None:
        progress.say(lambda seconds: line(*args, seconds))

    return report
