"""The `openai` engine: judges images through any OpenAI-compatible chat completions server
(`lmdeploy serve api_server`, vLLM, SGLang), typically a shared GPU pool.

One background thread runs an asyncio event loop that owns one pooled `httpx.AsyncClient`.
`classify` is called from the engine window's worker threads: it encodes each image and its
request body on the calling thread (so encoding runs in parallel, off the loop), hands the
bodies to the loop, where each item is its own HTTP request, and turns the answers into one
EngineResult per item. A failed item never fails its batch. httpx is imported lazily: without
the `openai` extra the package still imports, and building this engine says what to install.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import random
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base

from moderator.engine.base import EngineRequest, EngineResult
from moderator.engine.output import result_from_output
from moderator.engine.prompting import image_data_url, openai_messages
from moderator.engine.schema import response_format, verdict_schema
from moderator.engine.score import TokenLogprob, score_from_token_logprobs
from moderator.errors import ConfigError, ErrorCode, ModeratorError
from moderator.events.verdict import CATEGORIES, ModelInfo, category_code
from moderator.settings import EngineSettings

if TYPE_CHECKING:
    import httpx

log = structlog.get_logger("moderator.engine.openai")

OPENAI_MISSING = "engine.kind=openai needs the openai extra: pip install 'moderator[openai]'"
# Images are sent as base64 data URLs, so this bounds the request size (a 1024x1024 PNG is at
# most ~4 MiB encoded) while leaving the servers' own image processors room to work: it covers
# a 2x2 grid of LLaVA-OneVision's 384-pixel anyres tiles with detail to spare, and about 1,300
# Qwen2-VL visual tokens (28-pixel patches). The server resizes further as its model needs.
INPUT_SIZE = 1024
PROBE_TIMEOUT_S = 10.0  # start-up check of GET /models
CLOSE_TIMEOUT_S = 10.0
_RESULT_GRACE_S = 30.0  # beyond engine.timeout_s, before classify stops waiting for the loop
_THREAD_NAME = "moderator-openai-engine"
_JUDGED = tuple(category_code(c) for c in CATEGORIES[:-1])  # O1..O9

T = TypeVar("T")


class OpenAIEngineClosed(ModeratorError):
    """classify or check was called after close()."""


class _StatusError(Exception):
    """The server answered with an HTTP error status."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500


class _BadResponse(Exception):
    """A 2xx answer that is not the documented chat.completion shape."""


@dataclass(frozen=True)
class _Reply:
    data: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class _Failure:
    code: ErrorCode
    message: str


class OpenAIEngine:
    """Implements the Engine protocol against `engine.base_url` serving `engine.model`.

    Requests in flight are capped at `engine.concurrency x engine.batch_size`: as many as the
    window can hand over at once, so the cap only bites if the engine is shared by several
    windows. Each item has `engine.timeout_s` in all, queueing for a slot, retries and backoff
    included; HTTP connections are capped at `engine.openai.max_connections`.

    With `probe` (the default) the constructor checks, with a short timeout, that the server
    answers `GET {base_url}/models` and serves `engine.model`, so `moderator run` fails fast
    with one line. `model.smoke_test` is true only when that model entry says `smoke_test:
    true` (our test server marks tiny models so; real servers do not send the field). Without
    the probe it is false. `backoff_s` / `backoff_max_s` shape the retry waits.
    """

    def __init__(
        self,
        settings: EngineSettings,
        *,
        probe: bool = True,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
    ) -> None:
        if not settings.base_url:
            raise ConfigError("engine.base_url is required for engine.kind=openai")
        if not settings.model:
            raise ConfigError(
                "engine.model is required for engine.kind=openai (the model name the server serves)"
            )
        if not settings.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"engine.base_url must be an http(s) URL such as http://127.0.0.1:23333/v1, "
                f"got {settings.base_url!r}"
            )
        _require_httpx()
        self._settings = settings
        self._openai = settings.openai
        self._gen = settings.generation
        self._base_url = settings.base_url.rstrip("/")
        self._model = settings.model
        self._want_score = self._gen.score and self._openai.logprobs
        structured = self._gen.structured and self._openai.response_format != "none"
        self._request_record = {  # how the request was shaped beyond the generation settings
            "response_format": self._openai.response_format if structured else "none",
            "top_logprobs": self._openai.top_logprobs if self._want_score else None,
            "image_format": self._openai.image_format,
        }
        self._max_in_flight = settings.concurrency * settings.batch_size
        self._probe_timeout_s = probe_timeout_s
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._lock = threading.Lock()
        self._closed = False
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=_THREAD_NAME, daemon=True
        )
        self._thread.start()
        try:
            self._call(self._open())
            smoke_test = self._call(self._probe()) if probe else False
        except BaseException:
            self.close()
            raise
        self._info = ModelInfo(
            engine="openai", name=self._model, categories=_JUDGED, smoke_test=smoke_test
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def input_size(self) -> int:
        return INPUT_SIZE

    @property
    def max_in_flight(self) -> int:
        """The most HTTP requests this engine has open at once."""
        return self._max_in_flight

    def check(self) -> None:
        """Readiness probe: the server answers GET /models and serves the model (else
        ConfigError, one line)."""
        self._call(self._probe())

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        """One request per item, all in flight together; one result per item, in order."""
        prepared: list[bytes | EngineResult] = [self._prepare(request) for request in batch]
        payloads = [p for p in prepared if isinstance(p, bytes)]
        outcomes = self._send(payloads) if payloads else []
        answers = iter(outcomes)
        results: list[EngineResult] = []
        for request, item in zip(batch, prepared, strict=True):
            if isinstance(item, EngineResult):
                results.append(item)
                continue
            outcome = next(answers)
            if isinstance(outcome, _Failure):
                results.append(EngineResult(error_code=outcome.code, error_message=outcome.message))
            else:
                results.append(self._result(request, outcome))
        return results

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
            self._loop.close()

    # -- the calling thread's side ---------------------------------------------------------

    def _prepare(self, request: EngineRequest) -> bytes | EngineResult:
        """The JSON body for one item, or its error result if the image cannot be encoded."""
        try:
            return json.dumps(self._body(request)).encode()
        except Exception as exc:
            return EngineResult(
                error_code=ErrorCode.ENGINE_ERROR,
                error_message=f"could not build the request: {_describe(exc)}",
            )

    def _body(self, request: EngineRequest) -> dict[str, Any]:
        """Only fields OpenAI, lmdeploy, vLLM and SGLang all document (docs/engine-openai.md)."""
        gen, opts = self._gen, self._openai
        body: dict[str, Any] = {
            "model": self._model,
            "messages": openai_messages(
                request.prompt, image_data_url(request.image, opts.image_format)
            ),
            # Always explicit: every server otherwise applies the checkpoint's
            # generation_config.json defaults, which are not greedy.
            "temperature": gen.temperature,
            "top_p": gen.top_p,
            # max_tokens, not max_completion_tokens: all three servers accept both today, and
            # older releases of each only know max_tokens.
            "max_tokens": gen.max_new_tokens,
        }
        if gen.seed is not None:
            body["seed"] = gen.seed
        if gen.structured and opts.response_format != "none":
            schema = verdict_schema(request.categories, gen.rationale_max_chars)
            body["response_format"] = response_format(schema, kind=opts.response_format)
        if self._want_score:
            body["logprobs"] = True
            body["top_logprobs"] = opts.top_logprobs
        return body

    def _send(self, payloads: list[bytes]) -> list[_Reply | _Failure]:
        with self._lock:
            if self._closed:
                raise OpenAIEngineClosed("the openai engine is closed")
            future = asyncio.run_coroutine_threadsafe(self._send_all(payloads), self._loop)
        try:
            return future.result(self._settings.timeout_s + _RESULT_GRACE_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            message = f"no answer from {self._base_url} within {self._settings.timeout_s:g}s"
            return [_Failure(ErrorCode.ENGINE_TIMEOUT, message) for _ in payloads]
        except concurrent.futures.CancelledError:
            return [_Failure(ErrorCode.ENGINE_ERROR, "the openai engine was closed")] * len(
                payloads
            )

    def _result(self, request: EngineRequest, reply: _Reply) -> EngineResult:
        data = reply.data
        try:
            choice = data["choices"][0]
            message = choice["message"]
            content = message.get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            return EngineResult(
                error_code=ErrorCode.ENGINE_ERROR,
                error_message=f"{self._base_url} answered without choices[0].message",
            )
        generation: dict[str, Any] = {
            **self._gen.record(),
            "served_model": data.get("model"),
            "finish_reason": choice.get("finish_reason"),
            "attempts": reply.attempts,
            "request": self._request_record,
        }
        usage = data.get("usage")
        if isinstance(usage, dict):
            for key in ("prompt_tokens", "completion_tokens"):
                if isinstance(usage.get(key), int):
                    generation[key] = usage[key]
        score = None
        if self._want_score:
            tokens = token_logprobs(choice.get("logprobs"))
            score = score_from_token_logprobs(tokens) if tokens else None
        text = content if isinstance(content, str) else ""
        return result_from_output(text, request.categories, score=score, generation=generation)

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
        headers = {"Accept": "application/json"}
        if opts.api_key is not None:
            headers["Authorization"] = f"Bearer {opts.api_key.get_secret_value()}"
        self._client = httpx.AsyncClient(
            headers=headers,
            limits=httpx.Limits(
                max_connections=opts.max_connections,
                max_keepalive_connections=opts.max_connections,
            ),
            timeout=httpx.Timeout(self._settings.timeout_s, connect=opts.connect_timeout_s),
        )
        self._slots = asyncio.Semaphore(self._max_in_flight)

    async def _probe(self) -> bool:
        """Check the server serves the model; whether its entry marks a smoke-test model."""
        import httpx

        assert self._client is not None
        url = f"{self._base_url}/models"
        timeout = httpx.Timeout(
            self._probe_timeout_s,
            connect=min(self._openai.connect_timeout_s, self._probe_timeout_s),
        )
        try:
            response = await self._client.get(url, timeout=timeout)
        except httpx.HTTPError as exc:
            raise ConfigError(f"engine.base_url: cannot reach {url}: {_describe(exc)}") from None
        if response.status_code in (401, 403):
            raise ConfigError(
                f"engine.openai.api_key: {url} answered HTTP {response.status_code}: "
                f"{_error_message(response)}"
            )
        if response.status_code != 200:
            raise ConfigError(
                f"engine.base_url: {url} answered HTTP {response.status_code}: "
                f"{_error_message(response)} (the base URL usually ends in /v1)"
            )
        entries = _model_entries(response)
        if entries is None:
            raise ConfigError(
                f"engine.base_url: {url} did not answer with a model list "
                "(is it an OpenAI-compatible server? the base URL usually ends in /v1)"
            )
        entry = next((e for e in entries if e.get("id") == self._model), None)
        if entry is None:
            served = ", ".join(str(e.get("id")) for e in entries) or "none"
            raise ConfigError(
                f"engine.model: {self._model!r} is not served by {self._base_url} "
                f"(served: {served})"
            )
        return entry.get("smoke_test") is True

    async def _send_all(self, payloads: list[bytes]) -> list[_Reply | _Failure]:
        return list(await asyncio.gather(*(self._send_one(p) for p in payloads)))

    async def _send_one(self, payload: bytes) -> _Reply | _Failure:
        import httpx

        assert self._slots is not None
        attempts = [0]
        timeout_s = self._settings.timeout_s
        try:
            async with asyncio.timeout(timeout_s), self._slots:
                data: dict[str, Any] = await self._retrying()(self._post, payload, attempts)
            return _Reply(data, attempts[0])
        except TimeoutError:
            return _Failure(
                ErrorCode.ENGINE_TIMEOUT,
                f"no answer from {self._base_url} within {timeout_s:g}s ({_tries(attempts[0])})",
            )
        except httpx.TimeoutException as exc:
            return _Failure(
                ErrorCode.ENGINE_TIMEOUT,
                f"{self._base_url} timed out ({_describe(exc)}; {_tries(attempts[0])})",
            )
        except _StatusError as exc:
            return _Failure(ErrorCode.ENGINE_ERROR, self._status_message(exc, attempts[0]))
        except httpx.HTTPError as exc:
            return _Failure(
                ErrorCode.ENGINE_ERROR,
                f"cannot reach {self._base_url}: {_describe(exc)} ({_tries(attempts[0])})",
            )
        except _BadResponse as exc:
            return _Failure(ErrorCode.ENGINE_ERROR, f"{self._base_url}: {exc}")

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self._openai.attempts),
            wait=_Backoff(self._backoff_s, self._backoff_max_s),
            retry=retry_if_exception(_retryable),
            before_sleep=_log_retry,
            reraise=True,
        )

    async def _post(self, payload: bytes, attempts: list[int]) -> dict[str, Any]:
        assert self._client is not None
        attempts[0] += 1
        response = await self._client.post(
            f"{self._base_url}/chat/completions",
            content=payload,
            headers={"Content-Type": "application/json"},
        )
        if not 200 <= response.status_code < 300:
            raise _StatusError(
                response.status_code, _error_message(response), _retry_after(response)
            )
        try:
            data = response.json()
        except ValueError:
            raise _BadResponse("the answer is not JSON") from None
        if not isinstance(data, dict):
            raise _BadResponse("the answer is not a JSON object")
        return data

    def _status_message(self, exc: _StatusError, attempts: int) -> str:
        where = f"{self._base_url} answered HTTP {exc.status}: {exc.message}"
        if exc.retryable:
            return f"{where} ({_tries(attempts)})"
        hint = _hint(exc.message) if exc.status in (400, 422) else None
        return f"{where} (request rejected, not retried{'; ' + hint if hint else ''})"

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
        await self._loop.shutdown_asyncgens()
        await self._loop.shutdown_default_executor()


def token_logprobs(logprobs: Any) -> list[TokenLogprob] | None:
    """`choices[0].logprobs` → TokenLogprob per generated token; None if absent or malformed.

    Each entry's `top` holds the position's alternatives with the chosen token among them:
    vLLM and SGLang list it in `top_logprobs` already, lmdeploy only as `token`. lmdeploy also
    reports tokens as the tokenizer's raw byte-level pieces ("Ġ" for a space), the others as
    text; pieces are turned back into text so that all servers look alike.
    """
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content:
        return None
    tokens: list[TokenLogprob] = []
    for entry in content:
        parsed = _token(entry)
        if parsed is None:
            return None
        token, value = parsed
        top: list[tuple[str, float]] = []
        alternatives = entry.get("top_logprobs") or []
        if not isinstance(alternatives, list):
            return None
        for alternative in alternatives:
            parsed_alt = _token(alternative)
            if parsed_alt is None:
                return None
            top.append(parsed_alt)
        if token and all(text != token for text, _ in top):
            top.append((token, value))
        tokens.append(TokenLogprob(token=token, logprob=value, top=tuple(top)))
    return tokens


def _token(entry: Any) -> tuple[str, float] | None:
    if not isinstance(entry, dict):
        return None
    token, value = entry.get("token"), entry.get("logprob")
    if not isinstance(token, str) or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return _piece_text(token), float(value)


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2 byte-level BPE: the printable stand-in character for each byte."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in kept}
    shifted = [b for b in range(256) if b not in kept]
    table.update({chr(0x100 + i): b for i, b in enumerate(shifted)})
    return table


_BYTE_LEVEL = _byte_level_alphabet()
_SHIFTED = frozenset(c for c in _BYTE_LEVEL if ord(c) >= 0x100)


def _piece_text(token: str) -> str:
    """A byte-level piece such as "ĠUnsafe" as text (" Unsafe"); other tokens unchanged."""
    if not any(c in _SHIFTED for c in token) or not all(c in _BYTE_LEVEL for c in token):
        return token
    try:
        return bytes(_BYTE_LEVEL[c] for c in token).decode("utf-8")
    except UnicodeDecodeError:
        return token


class _Backoff(wait_base):
    """Exponential backoff (initial x 2^n, capped) plus up to `initial` of random jitter; a
    server's Retry-After (capped) is waited at least."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._initial = initial
        self._max = maximum

    def __call__(self, retry_state: RetryCallState) -> float:
        exponent = min(retry_state.attempt_number - 1, 30)
        delay = min(self._max, self._initial * 2.0**exponent + random.uniform(0, self._initial))
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, _StatusError) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, self._max))
        return delay


def _retryable(exc: BaseException) -> bool:
    import httpx

    if isinstance(exc, _StatusError):
        return exc.retryable
    return isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError)


def _log_retry(retry_state: RetryCallState) -> None:
    outcome = retry_state.outcome
    exc = outcome.exception() if outcome is not None else None
    log.warning(
        "openai_request_retry",
        attempt=retry_state.attempt_number,
        error=str(exc) if isinstance(exc, _StatusError) else _describe(exc) if exc else None,
        wait_s=round(retry_state.upcoming_sleep, 3),
    )


def _require_httpx() -> None:
    try:
        import httpx  # noqa: F401
    except ImportError:
        raise ConfigError(OPENAI_MISSING) from None


def _model_entries(response: httpx.Response) -> list[dict[str, Any]] | None:
    try:
        data = response.json()
    except ValueError:
        return None
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return None
    return entries


def _error_message(response: httpx.Response) -> str:
    """The server's error text, one line: OpenAI and vLLM nest it under "error", lmdeploy and
    SGLang send it flat, FastAPI's request validation sends "detail"."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message: Any = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        if message is None:
            message = body.get("message")
        if message is None and "detail" in body:
            message = _detail(body["detail"])
    if not isinstance(message, str) or not message.strip():
        message = response.text.strip() or response.reason_phrase or "no details"
    return _one_line(message)


def _detail(detail: Any) -> str:
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return f"{loc}: {first.get('msg', '')}".strip(": ")
    return str(detail)


def _hint(message: str) -> str | None:
    """Which setting to change when a server rejects a parameter we send."""
    lowered = message.lower()
    if "logprob" in lowered:
        return (
            "if the server does not serve log-probabilities set engine.openai.logprobs: false "
            "(scores become null) or lower engine.openai.top_logprobs"
        )
    if "response_format" in lowered or "json_schema" in lowered or "schema" in lowered:
        return "set engine.openai.response_format to json_object or none"
    if "seed" in lowered:
        return "unset engine.generation.seed"
    if "max_tokens" in lowered or "context length" in lowered:
        return "lower engine.generation.max_new_tokens"
    return None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _describe(exc: BaseException) -> str:
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _tries(attempts: int) -> str:
    return f"{attempts} attempt{'s' if attempts != 1 else ''}"
