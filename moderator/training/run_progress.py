"""The status line of a run of known length over dataset samples (eval, rationales), with an
ETA."""

from __future__ import annotations

from typing import TextIO

from moderator.durations import duration
from moderator.pipeline.progress import Counts, Progress, Tally


class RunProgress(Progress):
    """The scan's status line (moderator/pipeline/progress.py) for a run of known length:
    `LABEL: done/total samples (pct), errors N, rate samples/s, ETA ...`. The final line (the
    end of the run, or where a Ctrl-C stopped it) has the wall time instead of an ETA."""

    def __init__(self, stream: TextIO, label: str) -> None:
        super().__init__(stream)
        self._label = label
        self._final = False

    def finish(self, counts: Counts, tally: Tally | None = None) -> None:
        self._final = True
        super().finish(counts, tally)

    def _status(self, counts: Counts, now: float, *, listing: bool) -> str:
        rate = counts.done / max(now - self._started, 1e-9)
        pct = f" ({100 * counts.done / counts.total:.0f}%)" if counts.total else ""
        left = counts.total - counts.done
        ahead = rate > 0 and left > 0 and not self._final
        eta = f", ETA {duration(left / rate)}" if ahead else ""
        return (
            f"{self._label}: {counts.done}/{counts.total} samples{pct}, errors {counts.errors}, "
            f"{rate:.2f} samples/s{eta}"
        )
