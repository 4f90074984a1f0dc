"""The scan's progress display: one status line on stderr while objects are judged, and the
summary table at the end (verdicts by decision and by error code)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

TTY_EVERY_S = 0.2
LOG_EVERY_S = 5.0


@dataclass(frozen=True)
class Counts:
    """Where a scan stands: what the status line shows."""

    total: int  # objects listed so far
    done: int  # verdicts written
    errors: int  # of which error verdicts
    skipped: int  # objects that could not be submitted


@dataclass(frozen=True)
class Tally:
    """The verdicts a scan wrote, counted by decision and by error code (error verdicts only)."""

    decisions: Mapping[str, int]
    error_codes: Mapping[str, int]


DECISIONS = ("allow", "review", "block")


def summary_lines(tally: Tally) -> list[str]:
    """The summary table: every decision (zeros included) and the total, then each error code,
    most frequent first; aligned columns, no trailing spaces."""
    decisions = [*DECISIONS, *sorted(set(tally.decisions) - set(DECISIONS))]
    rows = [("decision", "verdicts")]
    rows += [(d, str(tally.decisions.get(d, 0))) for d in decisions]
    rows.append(("total", str(sum(tally.decisions.values()))))
    rows.append(("error code", "verdicts"))
    codes = sorted(tally.error_codes.items(), key=lambda item: (-item[1], item[0]))
    rows += [(code, str(n)) for code, n in codes] or [("(none)", "0")]
    width = max(len(name) for name, _ in rows)
    count = max(len(n) for _, n in rows)
    return [f"  {name.ljust(width)}  {n.rjust(count)}" for name, n in rows]


class Progress:
    """One status line on stderr: redrawn in place on a terminal, else a line every 5 s."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self.every_s = TTY_EVERY_S if self._tty else LOG_EVERY_S
        self._started = time.monotonic()
        self._next = self._started + self.every_s
        self._drawn = False

    def tick(self, counts: Counts, *, listing: bool) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every_s
        self._show(self._status(counts, now, listing=listing), final=False)

    def note(self, message: str) -> None:
        """A line of its own (the status line is redrawn on the next tick)."""
        self._clear()
        print(message, file=self._stream, flush=True)

    def finish(self, counts: Counts, tally: Tally | None = None) -> None:
        """The final status line; with `tally`, the summary table just before it."""
        if tally is not None:
            self._clear()
            for line in summary_lines(tally):
                print(line, file=self._stream)
        now = time.monotonic()
        line = self._status(counts, now, listing=False) + f", {now - self._started:.1f} s"
        if counts.skipped:
            line += f", {counts.skipped} not scanned"
        self._show(line, final=True)

    def _status(self, counts: Counts, now: float, *, listing: bool) -> str:
        rate = counts.done / max(now - self._started, 1e-9)
        more = "+" if listing else ""
        return (
            f"scan: done {counts.done}/{counts.total}{more}, errors {counts.errors}, "
            f"{rate:.1f} images/s"
        )

    def _show(self, line: str, *, final: bool) -> None:
        if self._tty:
            end = "\n" if final else ""
            self._stream.write(f"\r{line}\x1b[K{end}")
            self._drawn = not final
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def _clear(self) -> None:
        if self._tty and self._drawn:
            self._stream.write("\r\x1b[K")
            self._drawn = False
