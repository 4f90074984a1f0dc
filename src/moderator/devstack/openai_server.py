"""A small OpenAI-compatible chat completions server for tests and local work.

It speaks the non-streaming part of the API that the `openai` engine uses, and validates every
request strictly against the portable subset of the documented request shape: only fields that
OpenAI, `lmdeploy serve api_server`, vLLM and SGLang all document are accepted, anything else is
a 400 with an OpenAI-style error body. So a request this server accepts is one every supported
server understands. What the model says comes from a pluggable `CompletionBackend`; the server
itself only checks, decodes the image and shapes the response.

Faults for retry tests: `fail_next` answers the next N completions with an error status,
`delay_s` holds every completion back. `requests` keeps the bodies received, `max_concurrent`
the most completions handled at once.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from PIL.Image import Image

from moderator.engine.score import TokenLogprob
from moderator.errors import ModeratorError

API_PREFIX = "/v1"
MAX_TOP_LOGPROBS = 20  # OpenAI's documented ceiling, and vLLM's default --max-logprobs
MAX_BODY_BYTES = 64 << 20
STOP_TIMEOUT_S = 10.0  # how long stop() waits for handlers still running a backend call

# Request fields OpenAI, lmdeploy, vLLM and SGLang all document for chat completions (see the
# table in tests/test_openai_engine.py); each one is checked below or must keep its default.
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
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DATA_URL = re.compile(r"^data:image/(png|jpeg|jpg|webp|gif);base64,(.*)$", re.DOTALL)


class OpenAIServerError(ModeratorError):
    """The test server could not start, or was used before start()."""


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
    """A request that breaks the documented shape; becomes an OpenAI-style error response."""

    def __init__(
        self,
        message: str,
        *,
        status: int = HTTPStatus.BAD_REQUEST,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.kind = kind


@dataclass
class _Fault:
    status: int
    message: str
    retry_after: float | None = None


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: deque[_Fault] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    active: int = 0
    max_concurrent: int = 0
    connections: set[socket.socket] = field(default_factory=set)
    handlers: set[threading.Thread] = field(default_factory=set)


class OpenAITestServer:
    """Serves `GET /v1/models` and `POST /v1/chat/completions` on 127.0.0.1, ephemeral port.

    `smoke_test` marks the model entry in `/v1/models` (a field of our own that real servers
    do not send): the `openai` engine then flags its verdicts as coming from a tiny model.
    `logprobs_supported=False` answers requests asking for log-probabilities with a 400, as
    lmdeploy's PyTorch engine does when started without `--logprobs-mode`. `max_top_logprobs`
    is the ceiling for `top_logprobs` (vLLM's `--max-logprobs`). `api_key` makes the server
    demand that bearer token.
    """

    def __init__(
        self,
        backend: CompletionBackend,
        *,
        model: str = "test-guard",
        smoke_test: bool = True,
        logprobs_supported: bool = True,
        max_top_logprobs: int = MAX_TOP_LOGPROBS,
        api_key: str | None = None,
    ) -> None:
        self.backend = backend
        self.model = model
        self.smoke_test = smoke_test
        self.logprobs_supported = logprobs_supported
        self.max_top_logprobs = max_top_logprobs
        self.api_key = api_key
        self.delay_s = 0.0
        self._state = _State()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> OpenAITestServer:
        if self._httpd is not None:
            raise OpenAIServerError("the OpenAI test server is already running")
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        # Daemon handler threads, so a server nobody stopped cannot hold the interpreter at
        # exit; stop() joins them itself.
        httpd.daemon_threads = True
        self._httpd = httpd
        self._stopping.clear()
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="openai-test-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open keep-alive connections and join every server thread."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        # A keep-alive connection holds its handler thread until the peer hangs up: cut them.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            with self._state.lock:
                open_connections = list(self._state.connections)
                handlers = [t for t in self._state.handlers if t.is_alive()]
            if not handlers:
                break
            for conn in open_connections:
                with contextlib.suppress(OSError):  # already closed by the peer
                    conn.shutdown(socket.SHUT_RDWR)
            for thread in handlers:
                thread.join(0.1)
        httpd.server_close()

    def __enter__(self) -> OpenAITestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL clients use, ending in /v1."""
        if self._httpd is None:
            raise OpenAIServerError("the OpenAI test server is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}{API_PREFIX}"

    # -- faults and records ----------------------------------------------------------------

    def fail_next(
        self,
        count: int,
        status: int = HTTPStatus.SERVICE_UNAVAILABLE,
        message: str = "the engine is busy, try again",
        *,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next `count` chat completions with `status` and an error body."""
        with self._state.lock:
            self._state.faults.extend(_Fault(status, message, retry_after) for _ in range(count))

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The chat completion bodies received so far (valid or not), in arrival order."""
        with self._state.lock:
            return list(self._state.requests)

    @property
    def max_concurrent(self) -> int:
        """The most chat completions that were being handled at the same time."""
        with self._state.lock:
            return self._state.max_concurrent

    # -- request handling (handler threads) ------------------------------------------------

    def _models(self) -> dict[str, Any]:
        entry = {
            "id": self.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "moderator-devstack",
            "smoke_test": self.smoke_test,
        }
        return {"object": "list", "data": [entry]}

    def _chat(self, body: Any) -> dict[str, Any]:
        with self._state.lock:
            self._state.requests.append(body if isinstance(body, dict) else {"_invalid": body})
            self._state.active += 1
            self._state.max_concurrent = max(self._state.max_concurrent, self._state.active)
            fault = self._state.faults.popleft() if self._state.faults else None
        try:
            if self.delay_s > 0:
                self._stopping.wait(self.delay_s)
            if fault is not None:
                raise _FaultRaised(fault)
            prompt, image, params = self._validate(body)
            try:
                completion = self.backend.complete(prompt, image, params)
            except Exception as exc:
                raise RequestRejected(
                    f"backend failed: {exc}",
                    status=HTTPStatus.INTERNAL_SERVER_ERROR,
                    kind="server_error",
                ) from exc
            return self._response(completion, params)
        finally:
            with self._state.lock:
                self._state.active -= 1

    def _validate(self, body: Any) -> tuple[str, Image, CompletionParams]:
        if not isinstance(body, dict):
            raise RequestRejected("the request body must be a JSON object")
        unknown = sorted(set(body) - ACCEPTED_FIELDS)
        if unknown:
            raise RequestRejected(
                f"Unrecognized request argument supplied: {', '.join(unknown)}",
                param=unknown[0],
                code="unknown_parameter",
            )
        model = _typed(body, "model", str, required=True)
        if model != self.model:
            raise RequestRejected(
                f"The model '{model}' does not exist.",
                status=HTTPStatus.NOT_FOUND,
                param="model",
                code="model_not_found",
            )
        if _typed(body, "n", int) not in (None, 1):
            raise RequestRejected("only n=1 is supported", param="n")
        if _typed(body, "stream", bool):
            raise RequestRejected("this server does not stream", param="stream")
        stop = body.get("stop")
        if stop is not None and not isinstance(stop, str | list):
            raise RequestRejected("stop must be a string or a list of strings", param="stop")
        _typed(body, "user", str)
        prompt, image = _read_messages(body.get("messages"))
        temperature = _number(body, "temperature", 0.0, 2.0)
        top_p = _number(body, "top_p", 0.0, 1.0)
        if top_p is not None and top_p <= 0:
            raise RequestRejected("top_p must be in (0, 1]", param="top_p")
        max_tokens = _positive(body, "max_tokens")
        max_completion_tokens = _positive(body, "max_completion_tokens")
        seed = _typed(body, "seed", int)
        logprobs = bool(_typed(body, "logprobs", bool))
        top_logprobs = _typed(body, "top_logprobs", int)
        if top_logprobs is not None:
            if not 0 <= top_logprobs <= self.max_top_logprobs:
                raise RequestRejected(
                    f"top_logprobs must be between 0 and {self.max_top_logprobs}",
                    param="top_logprobs",
                )
            if top_logprobs > 0 and not logprobs:
                raise RequestRejected(
                    "when using top_logprobs, logprobs must be set to true", param="top_logprobs"
                )
        if (logprobs or top_logprobs) and not self.logprobs_supported:
            raise RequestRejected(
                f"logprobs({logprobs})/top_logprobs({top_logprobs}) requested but this server "
                "was started without log-probabilities",
                param="logprobs",
            )
        params = CompletionParams(
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_completion_tokens if max_completion_tokens is not None else max_tokens,
            seed=seed,
            json_schema=_read_response_format(body.get("response_format")),
            logprobs=logprobs,
            top_logprobs=top_logprobs or 0,
        )
        return prompt, image, params

    def _response(self, completion: Completion, params: CompletionParams) -> dict[str, Any]:
        logprobs: dict[str, Any] | None = None
        if params.logprobs and completion.tokens is not None:
            logprobs = {
                "content": [
                    {
                        **_token_entry(tok.token, tok.logprob),
                        "top_logprobs": [
                            _token_entry(text, value)
                            for text, value in tok.top[: params.top_logprobs]
                        ],
                    }
                    for tok in completion.tokens
                ]
            }
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
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


class _FaultRaised(Exception):
    def __init__(self, fault: _Fault) -> None:
        super().__init__(fault.message)
        self.fault = fault


def _token_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def _typed(body: Mapping[str, Any], name: str, kind: type, *, required: bool = False) -> Any:
    """The field's value if it has JSON type `kind` (bools are not ints here), else a 400."""
    value = body.get(name)
    if value is None:
        if required:
            raise RequestRejected(f"{name} is required", param=name)
        return None
    if isinstance(value, bool) and kind is not bool:
        raise RequestRejected(f"{name} must be of type {kind.__name__}", param=name)
    if not isinstance(value, kind):
        raise RequestRejected(f"{name} must be of type {kind.__name__}", param=name)
    return value


def _number(body: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestRejected(f"{name} must be a number", param=name)
    if not low <= value <= high:
        raise RequestRejected(f"{name} must be between {low:g} and {high:g}", param=name)
    return float(value)


def _positive(body: Mapping[str, Any], name: str) -> int | None:
    value = _typed(body, name, int)
    if value is not None and value < 1:
        raise RequestRejected(f"{name} must be at least 1", param=name)
    return value  # type: ignore[no-any-return]  # checked to be an int above


def _read_messages(messages: Any) -> tuple[str, Image]:
    """The user turn's text (text parts joined by newlines) and its single image."""
    if not isinstance(messages, list) or not messages:
        raise RequestRejected("messages must be a non-empty list", param="messages")
    texts: list[str] = []
    images: list[Image] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestRejected(f"{where} must be an object", param=where)
        extra = sorted(set(message) - {"role", "content", "name"})
        if extra:
            raise RequestRejected(f"{where}: unexpected field {extra[0]}", param=where)
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise RequestRejected(f"{where}.role must be system, user or assistant", param=where)
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list) or not content:
            raise RequestRejected(f"{where}.content must be a string or a list", param=where)
        for j, part in enumerate(content):
            text, image = _read_part(part, f"{where}.content[{j}]", role)
            if text is not None:
                texts.append(text)
            if image is not None:
                images.append(image)
    if len(images) != 1:
        raise RequestRejected(
            f"this server judges exactly one image per request, got {len(images)}",
            param="messages",
        )
    return "\n".join(texts), images[0]


def _read_part(part: Any, where: str, role: str) -> tuple[str | None, Image | None]:
    if not isinstance(part, dict):
        raise RequestRejected(f"{where} must be an object", param=where)
    kind = part.get("type")
    if kind == "text":
        if set(part) != {"type", "text"} or not isinstance(part["text"], str):
            raise RequestRejected(f"{where}: a text part is {{type, text}}", param=where)
        return part["text"], None
    if kind == "image_url":
        if role != "user":
            raise RequestRejected(f"{where}: images belong in a user message", param=where)
        if set(part) != {"type", "image_url"} or not isinstance(part["image_url"], dict):
            raise RequestRejected(f"{where}: an image part is {{type, image_url}}", param=where)
        image_url = part["image_url"]
        if set(image_url) - {"url", "detail"} or not isinstance(image_url.get("url"), str):
            raise RequestRejected(f"{where}.image_url is {{url, detail?}}", param=where)
        if image_url.get("detail", "auto") not in ("auto", "low", "high"):
            raise RequestRejected(f"{where}.image_url.detail must be auto, low or high")
        return None, _decode_data_url(image_url["url"], where)
    raise RequestRejected(f"{where}: unsupported content part type {kind!r}", param=where)


def _decode_data_url(url: str, where: str) -> Image:
    match = _DATA_URL.match(url)
    if match is None:
        raise RequestRejected(
            f"{where}.image_url.url must be a base64 data URL (data:image/...;base64,...)",
            param=where,
        )
    try:
        raw = base64.b64decode(match.group(2), validate=True)
        image = PILImage.open(io.BytesIO(raw))
        image.load()
    except (binascii.Error, ValueError, OSError, UnidentifiedImageError) as exc:
        raise RequestRejected(f"{where}: the image cannot be decoded: {exc}", param=where) from exc
    return image


def _read_response_format(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RequestRejected("response_format must be an object", param="response_format")
    kind = value.get("type")
    if kind == "text":
        if set(value) != {"type"}:
            raise RequestRejected("response_format text takes no options", param="response_format")
        return None
    if kind == "json_object":
        if set(value) != {"type"}:
            raise RequestRejected(
                "response_format json_object takes no options", param="response_format"
            )
        return {"type": "object"}
    if kind != "json_schema":
        raise RequestRejected(
            "response_format.type must be text, json_object or json_schema",
            param="response_format",
        )
    if set(value) != {"type", "json_schema"} or not isinstance(value["json_schema"], dict):
        raise RequestRejected(
            "response_format json_schema needs a json_schema object", param="response_format"
        )
    spec = value["json_schema"]
    extra = sorted(set(spec) - {"name", "description", "schema", "strict"})
    if extra:
        raise RequestRejected(
            f"response_format.json_schema: unexpected field {extra[0]}", param="response_format"
        )
    name = spec.get("name")
    if not isinstance(name, str) or _SCHEMA_NAME.match(name) is None:
        raise RequestRejected(
            "response_format.json_schema.name is required: 1-64 of [A-Za-z0-9_-]",
            param="response_format",
        )
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise RequestRejected(
            "response_format.json_schema.schema must be an object", param="response_format"
        )
    if "strict" in spec and not isinstance(spec["strict"], bool):
        raise RequestRejected(
            "response_format.json_schema.strict must be a boolean", param="response_format"
        )
    if "description" in spec and not isinstance(spec["description"], str):
        raise RequestRejected(
            "response_format.json_schema.description must be a string", param="response_format"
        )
    return schema


def _handler_class(server: OpenAITestServer) -> type[BaseHTTPRequestHandler]:
    state = server._state

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so clients can pool connections
        server_version = "moderator-openai-test"

        def setup(self) -> None:
            super().setup()
            with state.lock:
                state.connections.add(self.connection)
                state.handlers = {t for t in state.handlers if t.is_alive()}
                state.handlers.add(threading.current_thread())

        def finish(self) -> None:
            with state.lock:
                state.connections.discard(self.connection)
            with contextlib.suppress(OSError):  # the peer or stop() closed the socket first
                super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # tests assert on responses, not on access logs

        def do_GET(self) -> None:
            if not self._authorized():
                return
            if self.path.rstrip("/") == f"{API_PREFIX}/models":
                self._send(HTTPStatus.OK, server._models())
            else:
                self._error(RequestRejected(f"no route {self.path}", status=HTTPStatus.NOT_FOUND))

        def do_POST(self) -> None:
            body = self._read_body()
            if body is _UNREADABLE or not self._authorized():
                return
            if self.path.rstrip("/") != f"{API_PREFIX}/chat/completions":
                self._error(RequestRejected(f"no route {self.path}", status=HTTPStatus.NOT_FOUND))
                return
            try:
                self._send(HTTPStatus.OK, server._chat(body))
            except RequestRejected as exc:
                self._error(exc)
            except _FaultRaised as exc:
                fault = exc.fault
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = f"{fault.retry_after:g}"
                self._error(
                    RequestRejected(fault.message, status=fault.status, kind="server_error"),
                    headers,
                )

        def _read_body(self) -> Any:
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY_BYTES:
                self._error(RequestRejected("a Content-Length up to 64 MiB is required"))
                self.close_connection = True
                return _UNREADABLE
            raw = self.rfile.read(length)
            try:
                return json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                self._error(RequestRejected(f"the request body is not JSON: {exc}"))
                return _UNREADABLE

        def _authorized(self) -> bool:
            if server.api_key is None:
                return True
            if self.headers.get("Authorization") == f"Bearer {server.api_key}":
                return True
            self._error(
                RequestRejected(
                    "Incorrect API key provided",
                    status=HTTPStatus.UNAUTHORIZED,
                    code="invalid_api_key",
                )
            )
            return False

        def _error(self, exc: RequestRejected, headers: Mapping[str, str] | None = None) -> None:
            body = {
                "error": {
                    "message": exc.message,
                    "type": exc.kind,
                    "param": exc.param,
                    "code": exc.code,
                }
            }
            self._send(exc.status, body, headers)

        def _send(
            self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
        ) -> None:
            payload = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                self.close_connection = True  # the client went away (e.g. it timed out)

    return Handler


_UNREADABLE: Any = object()
