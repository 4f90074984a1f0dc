"""What the engine window (moderator/engine/window.py) asks of the engine behind it, beyond the
Engine protocol: engines whose server batches by itself, and engines that wait out an outage
of their server."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class SelfBatching(Protocol):
    """An engine whose server batches by itself: one request per call, up to `call_limit`
    calls at once (never above `max_calls`); extra calls are held ready until a request ends."""

    @property
    def max_calls(self) -> int: ...

    @property
    def call_limit(self) -> int: ...


@runtime_checkable
class WaitsOut(Protocol):
    """An engine that waits out an outage of its server instead of failing its requests: a call
    may take `grace_s` beyond the window's timeout to find out whether the server is down,
    then as long as the wait lasts. `waited_at()` is now while a request waits, else when one
    last stopped (-inf if none ever did); `waiting_out()` whether one waits now; `waiting_s()`
    how long the server has answered none of the waiting requests (the readiness check)."""

    @property
    def grace_s(self) -> float: ...

    def waited_at(self) -> float: ...

    def waiting_out(self) -> bool: ...

    def waiting_s(self) -> float: ...
