"""What one decode may take: formats, pixels, frames, memory and CPU time."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moderator.errors import ErrorCode, ProcessingError

if TYPE_CHECKING:
    from moderator.settings import FetchSettings


@dataclass(frozen=True)
class DecodeLimits:
    """What decode_image accepts: format allowlist, pixel limit per frame, frames sampled (K),
    CPU time per decode (`timeout_s`), pixels decoded per object over all the frames it decodes
    (`max_decoded_pixels`), and the process's decode memory budget (`budget_bytes`, held by
    the Processor as a DecodeBudget). None: no limit."""

    allowed_formats: tuple[str, ...]
    max_pixels: int
    max_frames: int
    timeout_s: float | None = None
    budget_bytes: int | None = None
    max_decoded_pixels: int | None = None

    @classmethod
    def from_settings(cls, s: FetchSettings) -> DecodeLimits:
        """The limits configured in the `fetch` settings section."""
        return cls(
            tuple(f.upper() for f in s.allowed_formats),
            s.max_pixels,
            s.max_frames,
            s.decode_timeout_s,
            s.decode_budget_bytes,
            s.max_decoded_pixels,
        )


class Deadline:
    """One decode's time limit, checked where the work can stop (between frames and between
    full-size steps: Pillow's decoders cannot be interrupted).

    It counts the CPU time of the calling thread, where Pillow decodes: a busy machine slows a
    decode down but does not make a large ordinary image time out, and time spent waiting for
    decode memory does not count.
    """

    def __init__(self, timeout_s: float | None) -> None:
        self._timeout_s = timeout_s
        self._end = None if timeout_s is None else time.thread_time() + timeout_s

    def check(self, where: str) -> None:
        """Raise DECODE_TIMEOUT once the time is spent; `where` says what was reached."""
        if self._end is not None and time.thread_time() > self._end:
            raise ProcessingError(
                ErrorCode.DECODE_TIMEOUT,
                f"decoding took over {self._timeout_s:g}s of CPU (fetch.decode_timeout_s); "
                f"stopped {where}",
            )
