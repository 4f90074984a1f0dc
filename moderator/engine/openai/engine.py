"""The `openai` engine: judges images through any OpenAI-compatible chat completions server
(`lmdeploy serve api_server`, vLLM, SGLang), typically a shared GPU pool.

The servers batch by themselves (continuous batching), so the engine declares itself
self-batching (`max_calls`, `call_limit`): the engine window then hands it one item per call,
as soon as the item arrives, and no item waits for batch-mates. It takes a few more calls than
its in-flight limit lets requests out (`call_limit`): those wait encoded at the client's gate
and go out the moment a request ends, with no thread hand-off in between, so the server's
queue does not run dry while the pod's threads wait for the CPU. `classify` is called from the
window's worker threads: it encodes each image and
its request body on the calling thread (so encoding runs in parallel, off the loop), hands the
bodies to the client's event-loop thread (`client.py`), where each item is its own HTTP
request, and turns the answers into one EngineResult per item (`request.py`). A failed item
never fails its batch. httpx is imported lazily: without the `openai` extra the package still
imports, and building this engine says what to install.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from moderator.engine.base import GUARD_MODEL, Capabilities, EngineRequest, EngineResult
from moderator.engine.openai.client import (
    CLOSE_TIMEOUT_S,
    PROBE_TIMEOUT_S,
    OpenAIClient,
    OpenAIEngineClosed,
)
from moderator.engine.openai.failure import Failure
from moderator.engine.openai.limit import InFlightLimit
from moderator.engine.openai.request import (
    ChatFormat,
    response_limit,
    shown_url,
    token_logprobs,
)
from moderator.errors import ConfigError
from moderator.events.verdict import ModelInfo
from moderator.masking import mask_passwords
from moderator.settings import EngineSettings

__all__ = [
    "CLOSE_TIMEOUT_S",
    "INPUT_SIZE",
    "OPENAI_MISSING",
    "PROBE_TIMEOUT_S",
    "OpenAIEngine",
    "OpenAIEngineClosed",
    "token_logprobs",
]

OPENAI_MISSING = "engine.kind=openai needs the openai extra: pip install 'moderator[openai]'"
# Images are sent as base64 data URLs, so this bounds the request size (a 1024x1024 PNG is at
# most ~4 MiB encoded) while leaving the servers' own image processors room to work: it covers
# a 2x2 grid of LLaVA-OneVision's 384-pixel anyres tiles with detail to spare, and about 1,300
# Qwen2-VL visual tokens (28-pixel patches). The server resizes further as its model needs.
INPUT_SIZE = 1024
# Requests held encoded at the gate, ready to go out as others end: limit // READY_SHARE, at
# least READY_MIN.
READY_SHARE = 4
READY_MIN = 2


class OpenAIEngine:
    """Implements the Engine protocol against `engine.base_url` serving `engine.model`.

    Requests in flight are capped by an InFlightLimit: up to `engine.openai.max_in_flight`
    (and `engine.openai.max_connections` when set), adapted to the server's latency and
    overload answers unless `engine.openai.adaptive` is false. Each item has
    `engine.timeout_s` in all, queueing for a slot, retries and backoff included, unless the
    server is down for everyone: then it waits for the server, up to `engine.outage_wait_s`
    (`outage.py`). The connection pool holds `engine.openai.max_connections` (default:
    max_in_flight), and each answer is capped at `engine.openai.max_response_bytes`
    (automatic when unset: `response_limit`).

    With `probe` (the default) the constructor checks, with a short timeout, that the server
    answers `GET {base_url}/models` and serves `engine.model`, so `moderator run` fails fast
    with one line. `model.smoke_test` is true only when that model entry says `smoke_test:
    true` (our test server marks tiny models so; real servers do not send the field). Without
    the probe it is false. `backoff_s` / `backoff_max_s` shape the retry waits.
    """

    capabilities: ClassVar[Capabilities] = GUARD_MODEL  # O1..O9, told by the policy prompt

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
                f"got {mask_passwords(settings.base_url)!r}"
            )
        _require_httpx()
        base_url = settings.base_url.rstrip("/")
        self._model = settings.model
        self._format = ChatFormat(
            settings.model, settings.generation, settings.openai, source=shown_url(base_url)
        )
        opts = settings.openai
        connections = opts.max_connections or opts.max_in_flight
        self._limit = InFlightLimit(
            min(opts.max_in_flight, connections),
            adaptive=opts.adaptive,
            tolerance=opts.latency_tolerance,
        )
        self._client = OpenAIClient(
            base_url,
            opts,
            timeout_s=settings.timeout_s,
            limit=self._limit,
            connections=connections,
            max_response_bytes=response_limit(settings.generation, settings.openai),
            probe_timeout_s=probe_timeout_s,
            backoff_s=backoff_s,
            backoff_max_s=backoff_max_s,
            outage_wait_s=settings.outage_wait_s,
        )
        try:
            smoke_test = self._client.probe(self._model) if probe else False
        except BaseException:
            self._client.close()
            raise
        self._info = ModelInfo(
            engine="openai",
            name=self._model,
            categories=self.capabilities.categories,
            smoke_test=smoke_test,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def input_size(self) -> int:
        return INPUT_SIZE

    @property
    def max_in_flight(self) -> int:
        """The most HTTP requests this engine ever has open at once."""
        return self._limit.maximum

    @property
    def in_flight_limit(self) -> int:
        """The most HTTP requests this engine opens at once now (adaptive: moves in
        [1, max_in_flight])."""
        return self._limit.limit

    @property
    def limit(self) -> InFlightLimit:
        """The in-flight limit itself: its base latency and probe count, for benchmarks."""
        return self._limit

    @property
    def call_limit(self) -> int:
        """The most `classify` calls (one item each, behind the engine window) to take now: the
        in-flight limit and a quarter more (at least 2), ready to go out as requests end."""
        return _with_ready(self._limit.limit)

    @property
    def max_calls(self) -> int:
        """The most `classify` calls ever taken at once."""
        return _with_ready(self._limit.maximum)

    @property
    def grace_s(self) -> float:
        """How much longer than `engine.timeout_s` a request may take to find out whether the
        server is down for everyone (the outage probe), before it starts waiting; 0 when no
        outage is waited out."""
        return self._client.outage_probe_s + 1.0 if self._client.outage.wait_s > 0 else 0.0

    def waited_at(self) -> float:
        """Now while a request waits out an outage of the server, else when one last
        stopped: the engine window times out no request before `engine.timeout_s` after."""
        return self._client.outage.waited_at()

    def waiting_out(self) -> bool:
        """Whether a request waits out an outage of the server now."""
        return self._client.outage.any_waiting()

    def waiting_s(self) -> float:
        """While requests wait out an outage, seconds since the server first failed; else 0
        (the `engine` readiness check)."""
        return self._client.outage.waiting_s()

    def check(self) -> None:
        """Readiness probe: the server answers GET /models and serves the model (else
        ConfigError, one line)."""
        self._client.probe(self._model)

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        """One request per item, all sent together as the in-flight limit allows; one result
        per item, in order. Behind the engine window each call holds one item."""
        prepared = [self._format.encode(request) for request in batch]
        sent = [
            (r.request_id, p) for r, p in zip(batch, prepared, strict=True) if isinstance(p, bytes)
        ]
        payloads = [p for _, p in sent]
        outcomes = self._client.send(payloads, [rid for rid, _ in sent]) if payloads else []
        answers = iter(outcomes)
        results: list[EngineResult] = []
        for request, item in zip(batch, prepared, strict=True):
            if isinstance(item, EngineResult):
                results.append(item)
                continue
            outcome = next(answers)
            if isinstance(outcome, Failure):
                results.append(EngineResult(error_code=outcome.code, error_message=outcome.message))
            else:
                results.append(self._format.result(request, outcome.data, outcome.attempts))
        return results

    def close(self) -> None:
        """Cancel requests still in flight, close the client and stop the loop thread."""
        self._client.close()


def _with_ready(limit: int) -> int:
    """A limit plus the requests held ready behind it: a quarter more, at least 2."""
    return limit + max(READY_MIN, limit // READY_SHARE)


def _require_httpx() -> None:
    try:
        import httpx  # noqa: F401
    except ImportError:
        raise ConfigError(OPENAI_MISSING) from None
