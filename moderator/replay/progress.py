"""A replay's progress on stderr: offsets committed of the range, rate and time left.

On a terminal the line is redrawn in place a few times a second; elsewhere (logs, CI) a plain
line is written every few seconds. It advances at each checkpoint, so what it counts is what a
resumed run would not read again; a resumed run starts from what its earlier processes
committed, and its rate and time left count only what it reads itself.
"""

from __future__ import annotations

import time
from typing import TextIO

from moderator.durations import duration

TTY_EVERY_S = 0.2
LOG_EVERY_S = 5.0


class ReplayProgress:
    def __init__(self, stream: TextIO, total: int, *, done: int = 0) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._every = TTY_EVERY_S if self._tty else LOG_EVERY_S
        self._total = max(total, 0)
        self._done = done
        self._base = done
        self._started = time.monotonic()
        self._next = self._started + self._every
        self._last = ""

    def resumed(self, done: int) -> None:
        """The offsets of the range a resumed run's earlier processes committed: counted as
        done, never in this run's rate."""
        self._done += done - self._base
        self._base = done

    def advance(self, committed_messages: int) -> None:
        """Called by the loop after each checkpoint with the messages it committed."""
        self._done += committed_messages
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._every
            self._show(self.line(now), final=False)

    def finish(self, *, complete: bool) -> None:
        """The last line; a complete run shows its whole range (markers never count)."""
        if complete:
            self._done = max(self._done, self._total)
        self._show(self.line(time.monotonic()), final=True)

    def note(self, line: str) -> None:
        """A line of its own (a warning); on a terminal it goes above the progress line, which
        is drawn again below it."""
        if self._tty and self._last:
            self._stream.write(f"\r\x1b[K{line}\n{self._last}")
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = (self._done - self._base) / elapsed
        shown = min(self._done, self._total) if self._total else self._done
        pct = f" ({100 * shown / self._total:.0f}%)" if self._total else ""
        left = self._total - shown
        eta = f", ETA {duration(left / rate)}" if rate > 0 and left > 0 else ""
        return f"replay: {shown}/{self._total} messages{pct}, {rate:.1f} msg/s{eta}"

    def _show(self, line: str, *, final: bool) -> None:
        if final and not self._tty and line == self._last:
            return
        self._last = line
        if self._tty:
            self._stream.write(f"\r{line}\x1b[K" + ("\n" if final else ""))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
