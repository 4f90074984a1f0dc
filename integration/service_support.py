"""`run_service` in a background thread, for integration tests that run the service in-process."""

from __future__ import annotations

import threading
from types import TracebackType

from moderator.service import Pipeline, run_service
from moderator.settings import Settings


class ServiceThread:
    """Runs the service until the `with` block ends, then stops it and keeps what it raised.

    Inside the block, `alive` says whether the consumer is still running; after it, `errors`
    holds any exception run_service raised and `stopped` whether it returned in time.
    """

    def __init__(self, settings: Settings, pipeline: Pipeline, *, join_s: float = 60) -> None:
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._join_s = join_s
        self._thread = threading.Thread(
            target=self._serve, args=(settings, pipeline), name="service", daemon=True
        )

    def _serve(self, settings: Settings, pipeline: Pipeline) -> None:
        try:
            run_service(settings, self._stop, pipeline=pipeline)
        except BaseException as exc:
            self.errors.append(exc)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def stopped(self) -> bool:
        return not self._thread.is_alive()

    def __enter__(self) -> ServiceThread:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(self._join_s)
