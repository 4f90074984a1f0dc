"""The OpenAI chat-completions protocol as the devstack test server speaks it, with no I/O:
what a backend is given and returns, the canned backend for tests, and the JSON answers
(model list, `chat.completion`, OpenAI-style error bodies).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

from PIL.Image import Image

from moderator.engine.guard.score import TokenLogprob

MAX_TOP_LOGPROBS = 20  # OpenAI's documented ceiling, and vLLM's default --max-logprobs

# Request fields OpenAI, lmdeploy, vLLM and SGLang all document for chat completions (see the
# table in tests/test_openai_engine.py); each one is checked in validation.py or must keep
# its default.
ACCEPTED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "seed",
        "response_format",
        "logprobs",
        "top_logprobs",
        "n",
        "stream",
        "stop",
        "user",
    }
)


@dataclass(frozen=True)
class CompletionParams:
    """The generation parameters of one request, as the backend sees them.

    `json_schema` is the schema of a `json_schema` response format, `{"type": "object"}` for
    `json_object`, and None when output is unconstrained. `top_logprobs` is 0 unless asked for.
    """

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    json_schema: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True)
class Completion:
    """What the backend generated; `tokens` (with their top alternatives) may be None."""

    text: str
    tokens: list[TokenLogprob] | None = None
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


class CompletionBackend(Protocol):
    """Generates the answer to one (prompt, image) user turn. Called from handler threads."""

    def complete(self, prompt: str, image: Image, params: CompletionParams) -> Completion: ...


class ScriptedBackend:
    """Test double: answers with canned completions, not a model.

    `respond`, when given, decides every answer. Otherwise queued completions (`push`) are
    used first in order, then `default`. A plain string becomes a Completion without tokens.
    Every call is recorded in `calls` as (prompt, image size, params).
    """

    def __init__(
        self,
        default: Completion | str = "",
        *,
        respond: Callable[[str, Image, CompletionParams], Completion | str] | None = None,
    ) -> None:
        self._default = _as_completion(default)
        self._respond = respond
        self._queue: deque[Completion] = deque()
        self._lock = threading.Lock()
        self.calls: list[tuple[str, tuple[int, int], CompletionParams]] = []

    def push(self, *completions: Completion | str) -> None:
        with self._lock:
            self._queue.extend(_as_completion(c) for c in completions)

    def complete(self, prompt: str, image: Image, params: CompletionParams) -> Completion:
        with self._lock:
            self.calls.append((prompt, image.size, params))
            queued = self._queue.popleft() if self._queue else None
        if self._respond is not None:
            return _as_completion(self._respond(prompt, image, params))
        return queued if queued is not None else self._default


def _as_completion(value: Completion | str) -> Completion:
    return value if isinstance(value, Completion) else Completion(text=value)


class RequestRejected(Exception):
    """A request that breaks the documented shape, or one a backend refuses (busy, failed):
    becomes an OpenAI-style error response."""

    def __init__(
        self,
        message: str,
        *,
        status: int = HTTPStatus.BAD_REQUEST,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.kind = kind
        self.retry_after = retry_after  # seconds, sent as a Retry-After header


def error_body(exc: RequestRejected) -> dict[str, Any]:
    """The nested error body OpenAI and vLLM send."""
    return {
        "error": {
            "message": exc.message,
            "type": exc.kind,
            "param": exc.param,
            "code": exc.code,
        }
    }


def models_response(model: str, *, smoke_test: bool) -> dict[str, Any]:
    """The `GET /models` answer listing `model`; `smoke_test` is a field of our own."""
    entry = {
        "id": model,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "moderator-devstack",
        "smoke_test": smoke_test,
    }
    return {"object": "list", "data": [entry]}


def completion_response(
    completion: Completion, params: CompletionParams, *, model: str
) -> dict[str, Any]:
    """The `chat.completion` answer, with log-probabilities only when they were asked for."""
    logprobs: dict[str, Any] | None = None
    if params.logprobs and completion.tokens is not None:
        logprobs = {
            "content": [
                {
                    **_token_entry(tok.token, tok.logprob),
                    "top_logprobs": [
                        _token_entry(text, value) for text, value in tok.top[: params.top_logprobs]
                    ],
                }
                for tok in completion.tokens
            ]
        }
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "logprobs": logprobs,
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
    }


def _token_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}
