"""A small OpenAI-compatible chat completions server for tests and local work.

It speaks the non-streaming part of the API that the `openai` engine uses, and validates every
request strictly against the portable subset of the documented request shape: only fields that
OpenAI, `lmdeploy serve api_server`, vLLM and SGLang all document are accepted, anything else is
a 400 with an OpenAI-style error body. So a request this server accepts is one every supported
server understands. What the model says comes from a pluggable `CompletionBackend`; the server
itself only checks (`validation.py`), decodes the image and shapes the response
(`protocol.py`); `http.py` holds the request handler.

Faults for retry tests: `fail_next` answers the next N completions with an error status,
`drop_next` closes the connection instead of answering, `delay_s` holds every completion back;
`stream_next` answers the next N with a body of any size, at any pace (`models_fault` does the
same for `/v1/models`), generated on the fly. A backend may refuse a request itself by raising
RequestRejected (the simulator in `simulator.py` answers 429 and 500 so). `requests` keeps the
bodies received, `max_concurrent` the most completions handled at once.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from moderator.dev.openai.http import (
    API_PREFIX,
    LISTEN_BACKLOG,
    MAX_BODY_BYTES,
    BodyFault,
    Connections,
    Drop,
    Fault,
    FaultRaised,
    Server,
    handler_class,
)
from moderator.dev.openai.protocol import (
    ACCEPTED_FIELDS,
    MAX_TOP_LOGPROBS,
    Completion,
    CompletionBackend,
    CompletionParams,
    RequestRejected,
    ScriptedBackend,
    completion_response,
    models_response,
)
from moderator.dev.openai.validation import validate_request
from moderator.errors import ModeratorError

__all__ = [
    "ACCEPTED_FIELDS",
    "API_PREFIX",
    "LISTEN_BACKLOG",
    "MAX_BODY_BYTES",
    "MAX_TOP_LOGPROBS",
    "STOP_TIMEOUT_S",
    "BodyFault",
    "Completion",
    "CompletionBackend",
    "CompletionParams",
    "OpenAIServerError",
    "OpenAITestServer",
    "RequestRejected",
    "ScriptedBackend",
]

STOP_TIMEOUT_S = 10.0  # how long stop() waits for handlers still running a backend call


class OpenAIServerError(ModeratorError):
    """The test server could not start, or was used before start()."""


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: deque[Fault | BodyFault | Drop] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    active: int = 0
    max_concurrent: int = 0


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
        self.models_fault: BodyFault | None = None
        self._state = _State()
        self._connections = Connections()
        self._stopping = threading.Event()
        self._httpd: Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> OpenAITestServer:
        if self._httpd is not None:
            raise OpenAIServerError("the OpenAI test server is already running")
        handler = handler_class(
            chat=self._chat,
            models=self._models,
            api_key=lambda: self.api_key,
            connections=self._connections,
            stopping=self._stopping,
        )
        # Daemon handler threads, so a server nobody stopped cannot hold the interpreter at
        # exit; stop() joins them itself.
        httpd = Server(("127.0.0.1", 0), handler)
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
        self._connections.cut(STOP_TIMEOUT_S)
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
            self._state.faults.extend(Fault(status, message, retry_after) for _ in range(count))

    def drop_next(self, count: int) -> None:
        """Close the connection of the next `count` chat completions without answering."""
        with self._state.lock:
            self._state.faults.extend(Drop() for _ in range(count))

    def stream_next(
        self,
        count: int,
        size: int,
        *,
        status: int = HTTPStatus.OK,
        chunk_bytes: int = 64 << 10,
        interval_s: float = 0.0,
        declare_length: bool = True,
    ) -> None:
        """Answer the next `count` chat completions with a `size`-byte body (a chat completion
        padded with filler), `chunk_bytes` per write, `interval_s` between writes; chunked
        when not `declare_length`. Nothing of that size is held in memory."""
        fault = BodyFault(size, status, chunk_bytes, interval_s, declare_length)
        with self._state.lock:
            self._state.faults.extend(fault for _ in range(count))

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
        if self.models_fault is not None:
            raise FaultRaised(self.models_fault)
        return models_response(self.model, smoke_test=self.smoke_test)

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
                raise FaultRaised(fault)
            prompt, image, params = validate_request(
                body,
                model=self.model,
                max_top_logprobs=self.max_top_logprobs,
                logprobs_supported=self.logprobs_supported,
            )
            try:
                completion = self.backend.complete(prompt, image, params)
            except RequestRejected:
                raise  # the backend's own answer (busy, failed), as it chose it
            except Exception as exc:
                raise RequestRejected(
                    f"backend failed: {exc}",
                    status=HTTPStatus.INTERNAL_SERVER_ERROR,
                    kind="server_error",
                ) from exc
            return completion_response(completion, params, model=self.model)
        finally:
            with self._state.lock:
                self._state.active -= 1
