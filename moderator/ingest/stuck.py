"""A producer call that does not return: bounded waits (the replacement: checkpoint.py).

librdkafka's transactional calls take a timeout, but `send_offsets_to_transaction` is known to
block past it when the group coordinator it cached goes away (librdkafka issues 5456 and 5511).
A consume loop stuck there makes no progress and holds its transaction open. So the checkpoint
runs each transactional call in a helper thread and waits for it a little longer than the
timeout it was given; a call still running then raises ProducerStuck. The loop drops that
producer and builds a new one with the same transactional id: its `init_transactions` fences
the old one and aborts the transaction it left open, and the checkpoint's events are processed
again from the last commit, as after any aborted checkpoint (docs/architecture.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from moderator.errors import ModeratorError

T = TypeVar("T")


class ProducerStuck(ModeratorError):
    """A producer call outlived its timeout: the producer must not be used again."""


def bounded(call: Callable[[], T], wait_s: float, what: str) -> T:
    """`call()` in a helper thread; its result or exception, or ProducerStuck when it is still
    running after `wait_s` (the thread is then left to finish, or not, on its own)."""
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the waiting thread
            outcome.append((False, exc))

    helper = threading.Thread(target=run, name=f"kafka {what}", daemon=True)
    helper.start()
    helper.join(wait_s)
    if not outcome:
        raise ProducerStuck(f"kafka: {what} did not return within {wait_s:.0f}s")
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[return-value]
    assert isinstance(value, BaseException)
    raise value
