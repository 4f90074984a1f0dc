"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM: finish the optimizer step, save a
checkpoint, stop.

The first signal only asks: the step that is running finishes, `checkpoint-N/` is saved, and
training stops, so `--resume` continues from exactly there and nothing trained is lost. A
second signal stops at once (KeyboardInterrupt): the steps since the newest checkpoint are
lost. The handlers are installed only while the Trainer runs, only in the main thread (where
Python delivers signals) and only for a signal that is not ignored (a shell's background job
ignores SIGINT); the evaluation after training stops at the first Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TextIO

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop(TrainerCallback):
    """Turns the first SIGINT or SIGTERM into "save a checkpoint after this step, then stop"
    (`installed()` sets the handlers; add the object to the Trainer's callbacks)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.signal: int | None = None  # the signal that asked for the stop
        self._step = 0

    @property
    def requested(self) -> bool:
        """Whether a signal has asked the run to stop."""
        return self.signal is not None

    def name(self) -> str:
        """The name of the signal that stopped the run ("" before one came)."""
        return signal.Signals(self.signal).name if self.signal is not None else ""

    @contextmanager
    def installed(self) -> Iterator[GracefulStop]:
        """The signal handlers, for the time of the `with` block; the old ones afterwards."""
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals only reach the main thread: nothing to catch here
            return
        previous = {
            number: handler
            for number in SIGNALS
            if (handler := signal.getsignal(number)) != signal.SIG_IGN  # a background job's
        }
        for number in previous:
            signal.signal(number, self.handle)
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def handle(self, number: int, frame: FrameType | None) -> None:
        """The signal handler: the first signal asks for a stop, the second stops at once."""
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = number
        again = "press Ctrl-C again" if number == signal.SIGINT else f"send {self.name()} again"
        self._say(
            f"train: {self.name()}: stopping after step {self._step + 1}, with a checkpoint "
            f"({again} to stop at once, losing the steps since the last checkpoint)"
        )

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        self._step = state.global_step

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        self._step = state.global_step
        if self.requested:
            control.should_log = True
            control.should_save = True
            control.should_training_stop = True

    def _say(self, line: str) -> None:
        # RuntimeError: the signal came while the stream was being written; say nothing then.
        with contextlib.suppress(RuntimeError):
            print(line, file=self._stream, flush=True)
