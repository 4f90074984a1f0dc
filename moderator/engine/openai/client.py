"""The `openai` engine's HTTP side: one background thread runs an asyncio event loop that owns
the connection pools (`httpx.AsyncClient`s); requests are capped in flight (by an InFlightLimit,
adaptive or fixed: `limit.py`), retried with backoff, and every outcome comes back as data (a
Reply or a Failure), never as an exception.

httpx is imported lazily, inside the functions that use it, so this module imports without the
`openai` extra.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from moderator.engine.openai.body import (
    ERROR_BODY_BYTES,
    AnswerTooLarge,
    UnreadableAnswer,
    read_capped,
)
from moderator.engine.openai.failure import Failure, failure
from moderator.engine.openai.gate import Gate
from moderator.engine.openai.limit import InFlightLimit
from moderator.engine.openai.outage import OUTAGE_PROBE_S, ServerOutage, server_answers, unreachable
from moderator.engine.openai.pools import (
    KEEPALIVE_EXPIRY_S,
    POOL_CONNECTIONS,
    Pool,
    open_requests,
    pool_sizes,
)
from moderator.engine.openai.request import (
    describe,
    error_message,
    model_entries,
    retry_after,
    shown_url,
)
from moderator.engine.openai.retry import OVERLOAD_STATUSES, BadResponse, StatusError, retrying
from moderator.errors import ConfigError, ErrorCode, ModeratorError
from moderator.masking import mask_credentials, mask_values
from moderator.settings import OpenAISettings

if TYPE_CHECKING:
    pass

log = structlog.get_logger("moderator.engine.openai")

PROBE_TIMEOUT_S = 10.0  # start-up check of GET /models
CLOSE_TIMEOUT_S = 10.0
_RESULT_GRACE_S = 30.0  # beyond the request timeout, before send stops waiting for the loop
_THREAD_NAME = "moderator-openai-engine"
T = TypeVar("T")


class OpenAIEngineClosed(ModeratorError):
    """classify or check was called after close()."""


@dataclass(frozen=True)
class Reply:
    """A 2xx JSON object answer, after `attempts` tries."""

    data: dict[str, Any]
    attempts: int


class OpenAIClient:
    """Talks to the server at `base_url` from its own event-loop thread.

    At most `limit.limit` requests are open at once (the limit learns from every answer's
    latency and from overload answers); the pools hold up to `connections` connections in all,
    at most `pool_connections` each (benchmarks compare that with one pool of all). Each request
    has `timeout_s` in all, queueing for a slot, retries and backoff included, reading the
    answer too, unless the server is down for everyone: then it waits for the server, up to
    `outage_wait_s` since it started (`outage.py`; 0: never). An answer is read as a stream
    and given up as soon as it passes `max_response_bytes` (an error answer is cut at 64 KiB:
    only its message is kept). The constructor starts the thread and opens the client (closing
    again if that fails); `close` must be called to stop them.
    """

    def __init__(
        self,
        base_url: str,
        options: OpenAISettings,
        *,
        timeout_s: float,
        limit: InFlightLimit,
        connections: int,
        max_response_bytes: int,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        pool_connections: int = POOL_CONNECTIONS,
        outage_wait_s: float = 0.0,
    ) -> None:
        self._base_url = base_url
        self._pool_connections = pool_connections
        self._shown = shown_url(base_url)  # in messages, which reach verdicts and logs
        self._openai = options
        key = options.api_key.get_secret_value() if options.api_key is not None else None
        self._secrets = (key,) if key else ()
        self._timeout_s = timeout_s
        self._limit = limit
        self._connections = connections
        self._max_response_bytes = max_response_bytes
        self._probe_timeout_s = probe_timeout_s
        self.outage_probe_s = min(probe_timeout_s, OUTAGE_PROBE_S)  # finding out it is down
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._lock = threading.Lock()
        self._closed = False
        self._pools: list[Pool] = []
        self._gate: Gate | None = None
        self.outage = ServerOutage(outage_wait_s)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=_THREAD_NAME, daemon=True
        )
        self._thread.start()
        try:
            self._call(self._open())
        except BaseException:
            self.close()
            raise

    def probe(self, model: str) -> bool:
        """Check the server answers GET /models and serves `model` (else ConfigError, one
        line); whether its entry marks a smoke-test model."""
        return self._call(self._probe(model))

    def send(
        self, payloads: list[bytes], labels: Sequence[str] | None = None
    ) -> list[Reply | Failure]:
        """POST each body to /chat/completions, all in flight together; one outcome each.

        `labels` (one per body, the request ids) name each request on its retry log lines."""
        with self._lock:
            if self._closed:
                raise OpenAIEngineClosed("the openai engine is closed")
            future = asyncio.run_coroutine_threadsafe(self._send_all(payloads, labels), self._loop)
        try:
            return future.result(self._timeout_s + self.outage.wait_s + _RESULT_GRACE_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            message = f"no answer from {self._shown} within {self._timeout_s:g}s"
            return [Failure(ErrorCode.ENGINE_TIMEOUT, message) for _ in payloads]
        except concurrent.futures.CancelledError:
            return [Failure(ErrorCode.ENGINE_ERROR, "the openai engine was closed")] * len(payloads)

    def close(self) -> None:
        """Cancel requests still in flight, close the client and stop the loop thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._thread.is_alive():
            shutdown = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            try:
                shutdown.result(CLOSE_TIMEOUT_S)
            except Exception as exc:  # closing must not raise; the loop stops anyway
                log.warning("openai_engine_close_failed", error=repr(exc))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CLOSE_TIMEOUT_S)
        if not self._loop.is_running():
            self._end_pending()
            self._loop.close()

    def _end_pending(self) -> None:
        """Cancel the tasks the stopped loop still holds (one started after the shutdown took
        its list, or one the shutdown's time ran out on) and let them end inside it: a task
        left to the garbage collector would unwind its connection attempts outside any loop."""
        pending = [task for task in asyncio.all_tasks(self._loop) if not task.done()]
        if not pending:
            return
        for task in pending:
            task.cancel()
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(asyncio.wait(pending, timeout=CLOSE_TIMEOUT_S))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for it (start-up and check only)."""
        with self._lock:
            if self._closed:
                coro.close()
                raise OpenAIEngineClosed("the openai engine is closed")
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    # -- the loop's side -------------------------------------------------------------------

    async def _open(self) -> None:
        import httpx

        opts = self._openai
        # identity: real servers do not compress, and a compressed answer costs CPU to inflate
        # (one that comes compressed anyway is inflated within the same cap).
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        if opts.api_key is not None:
            headers["Authorization"] = f"Bearer {opts.api_key.get_secret_value()}"
        timeout = httpx.Timeout(self._timeout_s, connect=opts.connect_timeout_s)
        for size in pool_sizes(self._connections, self._pool_connections):
            limits = httpx.Limits(
                max_connections=size,
                max_keepalive_connections=size,
                keepalive_expiry=KEEPALIVE_EXPIRY_S,
            )
            client = httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout)
            self._pools.append(Pool(client))
        self._gate = Gate(self._limit)

    async def _probe(self, model: str) -> bool:
        import httpx

        url = f"{self._shown}/models"
        timeout = httpx.Timeout(
            self._probe_timeout_s,
            connect=min(self._openai.connect_timeout_s, self._probe_timeout_s),
        )
        limit = self._max_response_bytes
        try:
            models = f"{self._base_url}/models"
            client = self._pools[0].client
            async with client.stream("GET", models, timeout=timeout) as response:
                status, reason = response.status_code, response.reason_phrase
                body = await read_capped(response, limit, truncate=status != 200)
        except httpx.HTTPError as exc:
            raise ConfigError(f"engine.base_url: cannot reach {url}: {describe(exc)}") from None
        except AnswerTooLarge as exc:
            raise ConfigError(
                f"engine.base_url: {url}: {exc} (engine.openai.max_response_bytes)"
            ) from None
        except UnreadableAnswer as exc:
            raise ConfigError(f"engine.base_url: {url}: {exc}") from None
        if status in (401, 403):
            raise ConfigError(
                f"engine.openai.api_key: {url} answered HTTP {status}: "
                f"{error_message(body, reason)}"
            )
        if status != 200:
            raise ConfigError(
                f"engine.base_url: {url} answered HTTP {status}: "
                f"{error_message(body, reason)} (the base URL usually ends in /v1)"
            )
        entries = model_entries(body)
        if entries is None:
            raise ConfigError(
                f"engine.base_url: {url} did not answer with a model list "
                "(is it an OpenAI-compatible server? the base URL usually ends in /v1)"
            )
        entry = next((e for e in entries if e.get("id") == model), None)
        if entry is None:
            served = ", ".join(str(e.get("id")) for e in entries) or "none"
            raise ConfigError(
                f"engine.model: {model!r} is not served by {self._shown} (served: {served})"
            )
        return entry.get("smoke_test") is True

    async def _send_all(
        self, payloads: list[bytes], labels: Sequence[str] | None
    ) -> list[Reply | Failure]:
        named = labels if labels is not None else [None] * len(payloads)
        sends = (self._send_one(p, label) for p, label in zip(payloads, named, strict=True))
        return list(await asyncio.gather(*sends))

    async def _send_one(self, payload: bytes, label: str | None = None) -> Reply | Failure:
        assert self._gate is not None
        attempts, sending = [0], [False]
        started = self.outage.now()
        retry = retrying(self._openai.attempts, self._backoff_s, self._backoff_max_s, label)
        try:
            async with asyncio.timeout(self._timeout_s):
                data: dict[str, Any] = await retry(self._gated_post, payload, attempts, sending)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and sending[0]:
                self._limit.overloaded()  # sent and not answered in time (not: queued here)
            failed = failure(exc, self._shown, self._timeout_s, attempts[0])
            unavailable = isinstance(exc, StatusError) and exc.unavailable
            if not unreachable(exc) or not await self.outage.down(
                started, self._answers, unavailable
            ):
                return failed
            return await self._wait_out(payload, attempts, started, failed.message)
        return Reply(data, attempts[0])

    async def _gated_post(
        self, payload: bytes, attempts: list[int], sending: list[bool]
    ) -> dict[str, Any]:
        """One attempt through the gate, so that a request waiting to be tried again holds
        no request slot (a 429 storm would otherwise leave every slot asleep in backoff).
        `sending[0]` is true while the attempt is out (still true if it is cancelled then)."""
        assert self._gate is not None
        async with self._gate as epoch:
            sending[0] = True
            try:
                data = await self._post(payload, attempts, epoch)
            except Exception:
                sending[0] = False
                raise
            sending[0] = False
            return data

    async def _wait_out(
        self, payload: bytes, attempts: list[int], started: float, reason: str
    ) -> Reply | Failure:
        """The server is down for everyone: try again until it answers (`outage.py`)."""
        gate = self._gate
        assert gate is not None

        async def attempt() -> dict[str, Any]:
            async with gate as epoch:
                return await self._post(payload, attempts, epoch)

        # Each try has the pools' timeouts; this bounds a try's queueing for the gate too.
        left = started + self.outage.wait_s + self._timeout_s - self.outage.now()
        try:
            async with asyncio.timeout(left):
                data = await self.outage.wait_out(attempt, started, reason)
        except Exception as exc:
            waited = self.outage.now() - started
            return failure(exc, self._shown, self._timeout_s, attempts[0], waited)
        return Reply(data, attempts[0])

    async def _answers(self) -> bool:
        """Whether the server answers GET /models (the outage probe: any answer but a 5xx)."""
        pool = min(self._pools, key=open_requests)
        return await server_answers(pool.client, f"{self._base_url}/models", self.outage_probe_s)

    async def _post(self, payload: bytes, attempts: list[int], epoch: int) -> dict[str, Any]:
        """One attempt; its latency (a 2xx) or its overload (429, 503, 504, a timeout) goes to
        the in-flight limit."""
        import httpx

        attempts[0] += 1
        pool = min(self._pools, key=open_requests)
        pool.open += 1
        started = time.monotonic()
        try:
            async with pool.client.stream(
                "POST",
                f"{self._base_url}/chat/completions",
                content=payload,
                headers={"Content-Type": "application/json"},
            ) as response:
                if not 200 <= response.status_code < 300:
                    try:
                        body = await read_capped(response, ERROR_BODY_BYTES, truncate=True)
                        message = mask_credentials(
                            mask_values(error_message(body, response.reason_phrase), self._secrets)
                        )
                    except UnreadableAnswer as exc:
                        message = str(exc)
                    if response.status_code in OVERLOAD_STATUSES:
                        self._limit.overloaded()
                    raise StatusError(response.status_code, message, retry_after(response))
                body = await read_capped(response, self._max_response_bytes)
        except Exception as exc:
            if isinstance(exc, httpx.TimeoutException):
                self._limit.overloaded()
            if unreachable(exc):
                self.outage.failed()
            raise
        finally:
            pool.open -= 1
        self._limit.answered(time.monotonic() - started, epoch)
        self.outage.answered()
        try:
            data = json.loads(body)
        except ValueError:
            raise BadResponse("the answer is not JSON") from None
        if not isinstance(data, dict):
            raise BadResponse("the answer is not a JSON object")
        return data

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pool in self._pools:
            await pool.client.aclose()
        await self._loop.shutdown_asyncgens()
        await self._loop.shutdown_default_executor()
