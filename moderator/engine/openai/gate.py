"""The `openai` engine's gate: requests enter it to be sent, at most the in-flight limit at a
time (event-loop thread only)."""

from __future__ import annotations

import asyncio

from moderator.engine.openai.limit import InFlightLimit


class Gate:
    """Admits a request while fewer than the limit are open; entering gives the limit's epoch,
    for the request's answers."""

    def __init__(self, limit: InFlightLimit) -> None:
        self._limit = limit
        self._open = 0
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> int:
        async with self._changed:
            await self._changed.wait_for(lambda: self._open < self._limit.limit)
            self._open += 1
            return self._limit.started(self._open)

    async def __aexit__(self, *exc: object) -> None:
        async with self._changed:
            self._open -= 1
            self._changed.notify_all()
