"""Readiness: named checks that `/readyz` evaluates, and the checks of a remote dependency.

A process declares the checks it will have (`expect`) before it has built what they look at,
so `/readyz` names what is still starting. A name may hold several checks (the service and the
audit sink in one process each add `broker`); it passes when all of them do.

A remote dependency (the Kafka cluster, the audit database) is checked by `Contact`: the work
itself reports each answer and each failure, so a busy process is judged by its own traffic at
no cost; when nothing was heard for `fresh_s`, the next check asks the dependency (a metadata
request, a small query), at most every `retry_s`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moderator.masking import mask_passwords

STARTING = "starting"


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


CheckFn = Callable[[], Check]


class Readiness:
    """The named checks of one process; ready when there is at least one and all pass."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checks: dict[str, list[CheckFn]] = {}

    def expect(self, *names: str) -> None:
        """Names that report `starting` (not ready) until a check is added under them."""
        with self._lock:
            for name in names:
                self._checks.setdefault(name, [])

    def add(self, name: str, check: CheckFn) -> None:
        with self._lock:
            self._checks.setdefault(name, []).append(check)

    def evaluate(self) -> tuple[bool, dict[str, Check]]:
        """Every check, run now (in the caller's thread): whether all pass, and each result."""
        with self._lock:
            checks = {name: list(fns) for name, fns in self._checks.items()}
        results = {name: _combined(fns) for name, fns in sorted(checks.items())}
        return bool(results) and all(r.ok for r in results.values()), results


def _combined(fns: list[CheckFn]) -> Check:
    if not fns:
        return Check(False, STARTING)
    results = [_run(fn) for fn in fns]
    failed = [r for r in results if not r.ok]
    shown = failed or results
    return Check(not failed, "; ".join(dict.fromkeys(r.detail for r in shown)))


def _run(fn: CheckFn) -> Check:
    try:
        return fn()
    except Exception as exc:  # a broken check reports itself, it never breaks /readyz
        return Check(False, f"check failed: {type(exc).__name__}")


class Contact:
    """Whether a remote dependency answers: from the work's own reports, else by asking it.

    `answered()` and `failed(reason)` are called by the code that talks to the dependency;
    `probe` (optional) asks it directly and raises when it cannot. `close()` stops probing
    before the client the probe uses is closed (a probe in progress finishes first).
    """

    def __init__(
        self,
        probe: Callable[[], object] | None = None,
        *,
        fresh_s: float = 15.0,
        retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._fresh_s = fresh_s
        self._retry_s = retry_s
        self._clock = clock
        self._probe_lock = threading.Lock()
        self._ok_at: float | None = None
        self._failed_at: float | None = None
        self._reason = "no answer yet"
        self._probed_at: float | None = None
        self._closed = False

    def answered(self) -> None:
        self._ok_at = self._clock()

    def failed(self, reason: str) -> None:
        self._reason = mask_passwords(" ".join(reason.split()))[:300]
        self._failed_at = self._clock()

    def close(self) -> None:
        with self._probe_lock:
            self._closed = True
        close = getattr(self._probe, "close", None)
        if callable(close):
            close()

    def __call__(self) -> Check:
        if self._closed:
            return Check(False, "stopping")
        now = self._clock()
        if self._fresh(now):
            return self._state(now)
        if self._probe is not None and (
            self._probed_at is None or now - self._probed_at >= self._retry_s
        ):
            self._ask()
        return self._state(self._clock())

    def _fresh(self, now: float) -> bool:
        ok_at, failed_at = self._ok_at, self._failed_at
        return (
            ok_at is not None
            and now - ok_at <= self._fresh_s
            and (failed_at is None or failed_at <= ok_at)
        )

    def _state(self, now: float) -> Check:
        ok_at, failed_at = self._ok_at, self._failed_at
        if ok_at is None or (failed_at is not None and failed_at > ok_at):
            return Check(False, self._reason)
        age = max(0.0, now - ok_at)
        # With a probe, an old answer is no answer: asking takes a few seconds at most, so
        # past fresh_s + retry_s the probes themselves have not been answered.
        if self._probe is not None and age > self._fresh_s + self._retry_s:
            return Check(False, f"no answer for {age:.1f} s")
        return Check(True, f"answered {age:.1f} s ago")

    def _ask(self) -> None:
        if not self._probe_lock.acquire(blocking=False):
            return  # another request is asking right now: report what is known
        try:
            if self._closed or self._probe is None:
                return
            self._probed_at = self._clock()
            try:
                self._probe()
            except Exception as exc:
                self.failed(str(exc) or type(exc).__name__)
            else:
                self.answered()
        finally:
            self._probe_lock.release()
