"""The `openai` engine against the project's own OpenAI-compatible test server (in-process,
127.0.0.1, scripted answers): request shape, score, retries, timeouts, start-up checks,
concurrency, isolation, shutdown.

What the servers document (checked against their source, to keep the request portable):

Request fields of `POST /v1/chat/completions` in each server's request model; only the
OpenAI-named fields are listed, each server's own extensions are left out.

- OpenAI: API reference "Create chat completion" (`max_tokens` deprecated in favour of
  `max_completion_tokens`; `top_logprobs` 0-20, needs `logprobs: true`).
- lmdeploy: `lmdeploy/serve/openai/protocol.py`, `ChatCompletionRequest` (InternLM/lmdeploy
  1263d5cd, 2026-08-21). `seed` sits among its "additional arguments". Unknown fields are
  ignored silently (pydantic default). Log-probabilities: TurboMind serves them; the PyTorch
  engine answers 400 unless started with `--logprobs-mode`
  (`serve/openai/chat_completions/validation.py`). Errors are flat:
  `{"object": "error", "message", "type", "param", "code": <int>}` (`ErrorResponse`).
- vLLM: `vllm/entrypoints/openai/chat_completion/protocol.py`, `ChatCompletionRequest`
  (vllm-project/vllm 002032ee). Unknown fields are ignored with a log line
  (`OpenAIBaseModel`, extra="allow"); `top_logprobs` needs `logprobs: true` and is capped by
  `--max-logprobs` (default 20). Errors are nested: `{"error": {"message", "type", "param",
  "code": <int>}}`.
- SGLang: `python/sglang/srt/entrypoints/openai/protocol.py`, `ChatCompletionRequest`
  (sgl-project/sglang 004c82e0). `seed` becomes `sampling_seed`; `response_format` json_schema
  with `strict: false` may go unconstrained when the chat renderer handles the format, so we
  never send `strict: false`. Errors are flat like lmdeploy's (`ErrorResponse`).

All three take the image as a content part `{"type": "image_url", "image_url": {"url": ...}}`
with a base64 `data:` URL, and `response_format` as `{"type": "json_schema", "json_schema":
{"name" (required), "description"?, "schema", "strict"?}}` or `{"type": "json_object"}`. The
answer's `choices[0].logprobs.content` is a list of `{token, logprob, bytes, top_logprobs:
[{token, logprob, bytes}]}` everywhere; lmdeploy leaves the chosen token out of `top_logprobs`
and reports raw byte-level pieces ("Ġ" for a space), vLLM and SGLang decoded text.
"""

from __future__ import annotations

import gc
import importlib
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from structlog.testing import capture_logs

from moderator.dev.openai.server import (
    ACCEPTED_FIELDS,
    Completion,
    CompletionParams,
    OpenAITestServer,
    ScriptedBackend,
)
from moderator.engine.base import EngineRequest, EngineResult
from moderator.engine.guard.score import TokenLogprob, score_from_token_logprobs
from moderator.engine.openai.engine import (
    OPENAI_MISSING,
    OpenAIEngine,
    OpenAIEngineClosed,
    token_logprobs,
)
from moderator.engine.openai.request import error_message
from moderator.engine.window import EngineWindow
from moderator.errors import ConfigError, ErrorCode
from moderator.events.verdict import CATEGORIES
from moderator.settings import EngineSettings

OPENAI_FIELDS = frozenset(
    {
        "messages", "model", "frequency_penalty", "logit_bias", "logprobs",
        "max_completion_tokens", "max_tokens", "n", "parallel_tool_calls", "presence_penalty",
        "reasoning_effort", "response_format", "seed", "stop", "stream", "stream_options",
        "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user",
    }
)  # fmt: skip
DOCUMENTED_FIELDS: dict[str, frozenset[str]] = {
    "lmdeploy": frozenset(
        {
            "model", "messages", "temperature", "top_p", "tools", "tool_choice",
            "parallel_tool_calls", "logprobs", "top_logprobs", "n", "logit_bias",
            "max_completion_tokens", "max_tokens", "stop", "stream", "stream_options",
            "presence_penalty", "frequency_penalty", "user", "reasoning_effort",
            "response_format", "seed",
        }
    ),
    "vllm": frozenset(
        {
            "messages", "model", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
            "max_tokens", "max_completion_tokens", "n", "presence_penalty", "response_format",
            "seed", "stop", "stream", "stream_options", "temperature", "top_p", "tools",
            "tool_choice", "reasoning_effort", "parallel_tool_calls", "user",
        }
    ),
    "sglang": frozenset(
        {
            "messages", "model", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
            "max_tokens", "max_completion_tokens", "n", "presence_penalty", "response_format",
            "seed", "stop", "stream", "stream_options", "temperature", "top_p", "user", "tools",
            "tool_choice", "parallel_tool_calls", "reasoning_effort",
        }
    ),
}  # fmt: skip
PORTABLE_FIELDS = OPENAI_FIELDS.intersection(*DOCUMENTED_FIELDS.values())
JSON_SCHEMA_FIELDS = frozenset({"name", "description", "schema", "strict"})  # all three
TOP_LOGPROBS_CEILING = 20  # OpenAI's documented maximum and vLLM's default --max-logprobs

MODEL = "test-guard"
SAFE = '{"rating": "Safe", "category": "NA: None applying", "rationale": "A plain square."}'
UNSAFE = '{"rating": "Unsafe", "category": "O4: Nudity Content", "rationale": "Nudity."}'
FAST: dict[str, Any] = {"backoff_s": 0.01, "backoff_max_s": 0.05}
ENGINE_THREAD = "moderator-openai-engine"

MakeEngine = Callable[..., OpenAIEngine]


def request(i: int = 0, colour: tuple[int, int, int] = (10, 20, 30)) -> EngineRequest:
    return EngineRequest(
        f"r{i}", Image.new("RGB", (32, 24), colour), "Judge the image.", CATEGORIES
    )


def rating_tokens(word: str, logp_unsafe: float, logp_safe: float) -> list[TokenLogprob]:
    """A verdict split into tokens the way a Qwen2 tokenizer roughly would, with the rating's
    alternatives at the rating step."""
    rest = ' "category": "NA: None applying", "rationale": "ok"}'
    if word == "Unsafe":
        rest = ' "category": "O4: Nudity Content", "rationale": "ok"}'
    chosen = logp_unsafe if word == "Unsafe" else logp_safe
    return [
        TokenLogprob('{"', -0.01, (('{"', -0.01),)),
        TokenLogprob("rating", -0.02, (("rating", -0.02),)),
        TokenLogprob('":', -0.01, (('":', -0.01),)),
        TokenLogprob(' "', -0.03, ((' "', -0.03),)),
        TokenLogprob(word, chosen, (("Unsafe", logp_unsafe), ("Safe", logp_safe), ("Un", -9.0))),
        TokenLogprob('",', -0.01, (('",', -0.01),)),
        TokenLogprob(rest, -0.5, ((rest, -0.5),)),
    ]


def completion_of(tokens: list[TokenLogprob], finish_reason: str = "stop") -> Completion:
    return Completion(
        text="".join(t.token for t in tokens),
        tokens=tokens,
        finish_reason=finish_reason,
        prompt_tokens=1200,
        completion_tokens=len(tokens),
    )


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend(SAFE)


@pytest.fixture
def server(backend: ScriptedBackend) -> Iterator[OpenAITestServer]:
    srv = OpenAITestServer(backend, model=MODEL).start()
    yield srv
    srv.stop()


@pytest.fixture
def make_engine(server: OpenAITestServer) -> Iterator[MakeEngine]:
    engines: list[OpenAIEngine] = []

    def make(*, url: str | None = None, **overrides: Any) -> OpenAIEngine:
        keywords = ("probe", "probe_timeout_s", "backoff_s", "backoff_max_s")
        options = {**FAST, **{key: overrides.pop(key) for key in keywords if key in overrides}}
        values: dict[str, Any] = {
            "kind": "openai",
            "base_url": url or server.url,
            "model": MODEL,
            **overrides,
        }
        engine = OpenAIEngine(EngineSettings.model_validate(values), **options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- what we send -------------------------------------------------------------------------------


def test_documented_field_table_is_consistent() -> None:
    assert {"model", "messages", "max_tokens", "response_format", "top_logprobs"} <= PORTABLE_FIELDS
    # The test server accepts nothing outside the portable set, so passing it means portable.
    assert ACCEPTED_FIELDS <= PORTABLE_FIELDS


def test_request_body_uses_only_fields_every_server_documents(
    make_engine: MakeEngine, server: OpenAITestServer
) -> None:
    engine = make_engine()
    [result] = engine.classify([request()])
    assert result.error_code is None, result.error_message
    [body] = server.requests
    assert set(body) <= PORTABLE_FIELDS
    assert set(body) == {
        "model", "messages", "temperature", "top_p", "max_tokens", "response_format",
        "logprobs", "top_logprobs",
    }  # fmt: skip
    assert body["model"] == MODEL
    assert body["temperature"] == 0.0 and body["top_p"] == 1.0
    assert body["max_tokens"] == 512  # engine.generation.max_new_tokens
    assert body["logprobs"] is True
    assert 1 <= body["top_logprobs"] <= TOP_LOGPROBS_CEILING

    [message] = body["messages"]
    assert message["role"] == "user"
    image_part, text_part = message["content"]  # the image first, as the models were trained
    assert set(image_part) == {"type", "image_url"} and image_part["type"] == "image_url"
    assert set(image_part["image_url"]) == {"url"}
    assert image_part["image_url"]["url"].startswith("data:image/png;base64,")
    assert text_part == {"type": "text", "text": "Judge the image."}

    fmt = body["response_format"]
    assert set(fmt) == {"type", "json_schema"} and fmt["type"] == "json_schema"
    spec = fmt["json_schema"]
    assert set(spec) <= JSON_SCHEMA_FIELDS and {"name", "schema"} <= set(spec)
    assert spec.get("strict") is not False  # SGLang may not constrain strict=false
    assert spec["schema"]["properties"]["category"]["enum"] == list(CATEGORIES)
    assert spec["schema"]["properties"]["rationale"]["maxLength"] == 1200


def test_optional_fields_follow_the_settings(
    make_engine: MakeEngine, server: OpenAITestServer
) -> None:
    make_engine(generation={"seed": 7, "temperature": 0.2, "top_p": 0.95}).classify([request()])
    make_engine(openai={"response_format": "json_object", "logprobs": False}).classify([request()])
    make_engine(openai={"response_format": "none"}, generation={"score": False}).classify(
        [request()]
    )
    make_engine(generation={"structured": False}, openai={"image_format": "JPEG"}).classify(
        [request()]
    )
    seeded, json_object, plain, jpeg = server.requests
    assert seeded["seed"] == 7 and seeded["temperature"] == 0.2 and seeded["top_p"] == 0.95
    assert json_object["response_format"] == {"type": "json_object"}
    assert "logprobs" not in json_object and "top_logprobs" not in json_object
    assert "response_format" not in plain and "logprobs" not in plain and "seed" not in plain
    assert "response_format" not in jpeg
    assert jpeg["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/jpeg;")
    for body in server.requests:
        assert set(body) <= PORTABLE_FIELDS


def test_bearer_token_is_sent(backend: ScriptedBackend) -> None:
    with OpenAITestServer(backend, model=MODEL, api_key="sekrit") as srv:
        base = {"kind": "openai", "base_url": srv.url, "model": MODEL}
        with pytest.raises(ConfigError, match=r"^engine\.openai\.api_key: .*HTTP 401"):
            OpenAIEngine(EngineSettings.model_validate(base), **FAST)
        settings = EngineSettings.model_validate({**base, "openai": {"api_key": "sekrit"}})
        engine = OpenAIEngine(settings, **FAST)
        try:
            [result] = engine.classify([request()])
        finally:
            engine.close()
    assert result.assessment is not None


# -- what we read back ---------------------------------------------------------------------------


def test_verdict_score_and_generation_record(
    make_engine: MakeEngine, backend: ScriptedBackend
) -> None:
    tokens = rating_tokens("Unsafe", -0.2, -1.8)
    backend.push(completion_of(tokens))
    engine = make_engine()
    [result] = engine.classify([request()])
    assert result.assessment is not None
    assert result.assessment.rating == "Unsafe"
    assert result.assessment.category == "O4: Nudity Content"
    expected = score_from_token_logprobs(tokens)
    assert expected is not None
    assert result.assessment.score == pytest.approx(expected)
    assert result.assessment.score == pytest.approx(1 / (1 + pow(2.718281828459045, -1.6)))
    assert result.raw_output == "".join(t.token for t in tokens)
    generation = result.generation
    assert generation["served_model"] == MODEL
    assert generation["finish_reason"] == "stop"
    assert generation["prompt_tokens"] == 1200 and generation["completion_tokens"] == len(tokens)
    assert generation["attempts"] == 1
    assert generation["temperature"] == 0.0 and generation["max_new_tokens"] == 512
    assert generation["request"] == {
        "response_format": "json_schema",
        "top_logprobs": 5,
        "image_format": "PNG",
    }


def test_score_is_null_without_logprobs(make_engine: MakeEngine, backend: ScriptedBackend) -> None:
    backend.push(Completion(UNSAFE, tokens=None))  # the server sends "logprobs": null
    [served_none] = make_engine().classify([request()])
    backend.push(completion_of(rating_tokens("Unsafe", -0.2, -1.8)))
    [not_asked] = make_engine(openai={"logprobs": False}).classify([request()])
    for result in (served_none, not_asked):
        assert result.assessment is not None and result.assessment.rating == "Unsafe"
        assert result.assessment.score is None


def test_score_is_null_when_the_other_rating_is_not_in_the_top_list(
    make_engine: MakeEngine, backend: ScriptedBackend
) -> None:
    tokens = rating_tokens("Safe", -5.0, -0.01)
    tokens[4] = TokenLogprob("Safe", -0.01, (("Safe", -0.01), ("S", -6.0)))
    backend.push(completion_of(tokens))
    [result] = make_engine().classify([request()])
    assert result.assessment is not None and result.assessment.rating == "Safe"
    assert result.assessment.score is None


def test_lmdeploy_style_logprobs_give_the_same_score() -> None:
    """lmdeploy: raw byte-level pieces, chosen token only in `token`, not in `top_logprobs`."""
    decoded = rating_tokens("Unsafe", -0.3, -1.5)

    def piece(text: str) -> str:
        return text.replace(" ", "Ġ")

    content = [
        {
            "token": piece(t.token),
            "logprob": t.logprob,
            "bytes": list(piece(t.token).encode()),
            "top_logprobs": [
                {"token": piece(text), "logprob": lp, "bytes": []}
                for text, lp in t.top
                if text != t.token
            ],
        }
        for t in decoded
    ]
    converted = token_logprobs({"content": content})
    assert converted is not None
    assert "".join(t.token for t in converted) == "".join(t.token for t in decoded)
    assert all(t.token in dict(t.top) for t in converted)
    assert score_from_token_logprobs(converted) == pytest.approx(score_from_token_logprobs(decoded))


def test_malformed_logprobs_are_ignored() -> None:
    assert token_logprobs(None) is None
    assert token_logprobs({"content": None}) is None
    assert token_logprobs({"content": [{"token": "a"}]}) is None
    assert (
        token_logprobs({"content": [{"token": "a", "logprob": True, "top_logprobs": []}]}) is None
    )
    assert token_logprobs({"content": [{"token": "a", "logprob": -1, "top_logprobs": 3}]}) is None
    # Decoded text that merely looks like a piece alphabet stays as it is.
    [plain] = token_logprobs({"content": [{"token": "é", "logprob": -1.0}]}) or []
    assert plain.token == "é"


def test_unparseable_output_keeps_the_raw_text(
    make_engine: MakeEngine, backend: ScriptedBackend
) -> None:
    prose = "I think this picture is fine, nothing to worry about."
    backend.push(Completion(prose, finish_reason="stop"))
    [result] = make_engine().classify([request()])
    assert result.error_code is ErrorCode.UNPARSEABLE_OUTPUT
    assert result.raw_output == prose
    assert result.generation["served_model"] == MODEL


def test_cut_off_output_is_reported_with_its_finish_reason(
    make_engine: MakeEngine, backend: ScriptedBackend
) -> None:
    backend.push(Completion('{"rating": "Uns', finish_reason="length"))
    [result] = make_engine().classify([request()])
    assert result.error_code is ErrorCode.UNPARSEABLE_OUTPUT
    assert result.raw_output == '{"rating": "Uns'
    assert result.generation["finish_reason"] == "length"


# -- retries and failures ------------------------------------------------------------------------


def test_503_is_retried_then_succeeds(make_engine: MakeEngine, server: OpenAITestServer) -> None:
    engine = make_engine(openai={"attempts": 3})
    server.fail_next(2, 503)
    [result] = engine.classify([request()])
    assert result.assessment is not None
    assert result.generation["attempts"] == 3
    assert len(server.requests) == 3


def test_each_retry_line_names_its_request(
    make_engine: MakeEngine, server: OpenAITestServer
) -> None:
    engine = make_engine(openai={"attempts": 3})
    server.fail_next(1, 503)
    with capture_logs() as logs:
        [result] = engine.classify([request(7)])
    assert result.assessment is not None
    retries = [entry for entry in logs if entry["event"] == "openai_request_retry"]
    assert [(entry["request_id"], entry["attempt"]) for entry in retries] == [("r7", 1)]


def test_429_and_500_are_retried_and_retry_after_is_honoured(
    make_engine: MakeEngine, server: OpenAITestServer
) -> None:
    engine = make_engine(openai={"attempts": 3}, backoff_max_s=1.0)
    server.fail_next(1, 429, "slow down", retry_after=0.3)
    server.fail_next(1, 500, "boom")
    started = time.monotonic()
    [result] = engine.classify([request()])
    assert result.assessment is not None
    assert time.monotonic() - started >= 0.3
    assert result.generation["attempts"] == 3


def test_5xx_after_the_last_attempt_is_an_engine_error_without_an_outage_wait(
    make_engine: MakeEngine, server: OpenAITestServer
) -> None:
    # With the default outage_wait_s, a 503 with no request answered is waited out
    # (tests/test_openai_outage.py).
    engine = make_engine(openai={"attempts": 2}, outage_wait_s=0)
    server.fail_next(5, 503, "no capacity")
    [result] = engine.classify([request()])
    assert result.error_code is ErrorCode.ENGINE_ERROR
    assert "HTTP 503: no capacity" in result.error_message
    assert "2 attempts" in result.error_message
    assert len(server.requests) == 2


def test_400_is_not_retried_and_names_the_setting(backend: ScriptedBackend) -> None:
    # lmdeploy's PyTorch engine without --logprobs-mode answers requests for logprobs so.
    with OpenAITestServer(backend, model=MODEL, logprobs_supported=False) as srv:
        settings = EngineSettings(
            kind="openai", base_url=srv.url, model=MODEL, openai={"attempts": 5}
        )
        engine = OpenAIEngine(settings, **FAST)
        try:
            [result] = engine.classify([request()])
        finally:
            engine.close()
        assert len(srv.requests) == 1
    assert result.error_code is ErrorCode.ENGINE_ERROR
    message = result.error_message
    assert "HTTP 400" in message and "logprobs" in message and "not retried" in message
    assert "engine.openai.logprobs: false" in message
    assert "\n" not in message


def test_top_logprobs_over_the_server_ceiling_is_rejected(backend: ScriptedBackend) -> None:
    with OpenAITestServer(backend, model=MODEL, max_top_logprobs=3) as srv:
        settings = EngineSettings(
            kind="openai", base_url=srv.url, model=MODEL, openai={"top_logprobs": 5}
        )
        engine = OpenAIEngine(settings, **FAST)
        try:
            [result] = engine.classify([request()])
        finally:
            engine.close()
    assert result.error_code is ErrorCode.ENGINE_ERROR
    assert "top_logprobs" in result.error_message and "engine.openai" in result.error_message


def test_slow_server_is_an_engine_timeout(
    make_engine: MakeEngine, server: OpenAITestServer
) -> None:
    engine = make_engine(timeout_s=0.3, openai={"attempts": 3})
    server.delay_s = 2.0
    started = time.monotonic()
    [result] = engine.classify([request()])
    elapsed = time.monotonic() - started
    server.delay_s = 0.0
    assert result.error_code is ErrorCode.ENGINE_TIMEOUT
    assert "0.3s" in result.error_message
    assert elapsed < 1.5  # the whole item, retries included, has timeout_s


def test_server_gone_after_start_is_an_engine_error_without_an_outage_wait(
    make_engine: MakeEngine, server: OpenAITestServer
) -> None:
    engine = make_engine(outage_wait_s=0, openai={"attempts": 2})
    server.stop()
    [result] = engine.classify([request()])
    assert result.error_code in (ErrorCode.ENGINE_ERROR, ErrorCode.ENGINE_TIMEOUT)
    assert "cannot reach" in result.error_message or "timed out" in result.error_message


def test_one_bad_item_does_not_fail_its_batch(
    make_engine: MakeEngine, server: OpenAITestServer
) -> None:
    def respond(prompt: str, image: Image.Image, params: CompletionParams) -> str:
        colour = image.convert("RGB").getpixel((0, 0))
        if colour == (255, 0, 0):
            raise RuntimeError("model crashed on this one")
        if colour == (0, 255, 0):
            return "no idea"
        return UNSAFE if colour == (0, 0, 255) else SAFE

    server.backend = ScriptedBackend(respond=respond)
    engine = make_engine(openai={"attempts": 2})
    batch = [
        request(0, (255, 0, 0)),
        request(1, (0, 255, 0)),
        request(2, (0, 0, 255)),
        EngineRequest("r3", Image.new("RGB", (0, 0)), "Judge the image.", CATEGORIES),
        request(4, (1, 2, 3)),
    ]
    crashed, prose, unsafe, empty, safe = engine.classify(batch)
    assert crashed.error_code is ErrorCode.ENGINE_ERROR and "HTTP 500" in crashed.error_message
    assert prose.error_code is ErrorCode.UNPARSEABLE_OUTPUT and prose.raw_output == "no idea"
    assert unsafe.assessment is not None and unsafe.assessment.rating == "Unsafe"
    assert empty.error_code is ErrorCode.ENGINE_ERROR and "request" in empty.error_message
    assert safe.assessment is not None and safe.assessment.rating == "Safe"


# -- start-up ------------------------------------------------------------------------------------


def test_unreachable_server_fails_start_up_with_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    settings = EngineSettings(kind="openai", base_url=url, model=MODEL)
    with pytest.raises(ConfigError) as info:
        OpenAIEngine(settings, probe_timeout_s=2.0, **FAST)
    message = str(info.value)
    assert message.startswith(f"engine.base_url: cannot reach {url}/models: ")
    assert "\n" not in message
    assert not [t for t in threading.enumerate() if t.name == ENGINE_THREAD]


def test_model_not_served_lists_the_served_names(server: OpenAITestServer) -> None:
    settings = EngineSettings(kind="openai", base_url=server.url, model="other-guard")
    with pytest.raises(ConfigError) as info:
        OpenAIEngine(settings, **FAST)
    assert str(info.value) == (
        f"engine.model: 'other-guard' is not served by {server.url} (served: {MODEL})"
    )


def test_not_an_openai_server_is_reported(server: OpenAITestServer) -> None:
    settings = EngineSettings(kind="openai", base_url=server.url + "/nope", model=MODEL)
    with pytest.raises(ConfigError, match=r"^engine\.base_url: .*HTTP 404.*ends in /v1"):
        OpenAIEngine(settings, **FAST)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": MODEL}, "engine.base_url is required for engine.kind=openai"),
        ({"base_url": "http://127.0.0.1:1/v1"}, "engine.model is required for engine.kind=openai"),
        ({"base_url": "127.0.0.1:23333/v1", "model": MODEL}, "engine.base_url must be an http"),
    ],
)
def test_missing_or_bad_settings(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}"):
        OpenAIEngine(EngineSettings.model_validate({"kind": "openai", **values}))


def test_missing_httpx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    settings = EngineSettings(kind="openai", base_url="http://127.0.0.1:1/v1", model=MODEL)
    with pytest.raises(ConfigError) as info:
        OpenAIEngine(settings)
    assert str(info.value) == OPENAI_MISSING
    assert OPENAI_MISSING == (
        "engine.kind=openai needs the openai extra: pip install 'moderator[openai]'"
    )


def test_engine_modules_import_without_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    import moderator.engine.openai as package

    names = ("request", "retry", "client", "engine")
    monkeypatch.setitem(sys.modules, "httpx", None)
    for name in names:  # imported afresh below; the originals come back after the test
        monkeypatch.delitem(sys.modules, f"moderator.engine.openai.{name}")
        monkeypatch.setattr(package, name, getattr(package, name))
    modules = [importlib.import_module(f"moderator.engine.openai.{name}") for name in names]
    assert modules[0].token_logprobs(None) is None
    assert modules[-1].OPENAI_MISSING == OPENAI_MISSING


def test_info_and_smoke_test_flag(make_engine: MakeEngine, backend: ScriptedBackend) -> None:
    engine = make_engine()
    assert engine.info.engine == "openai" and engine.info.name == MODEL
    assert engine.info.categories == tuple(f"O{i}" for i in range(1, 10))
    assert engine.info.smoke_test is True
    assert engine.input_size == 1024
    engine.check()
    assert make_engine(probe=False).info.smoke_test is False
    with OpenAITestServer(backend, model=MODEL, smoke_test=False) as real:
        assert make_engine(url=real.url).info.smoke_test is False


# -- concurrency and shutdown --------------------------------------------------------------------


def test_requests_in_flight_are_capped(make_engine: MakeEngine, server: OpenAITestServer) -> None:
    engine = make_engine(concurrency=1, batch_size=2, openai={"max_in_flight": 2})
    assert engine.max_in_flight == 2
    server.delay_s = 0.15
    results: list[list[EngineResult]] = []
    callers = [
        threading.Thread(
            target=lambda: results.append(engine.classify([request(i) for i in range(3)]))
        )
        for _ in range(2)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(10)
    assert len(results) == 2
    assert all(r.assessment is not None for batch in results for r in batch)
    assert server.max_concurrent == 2


def test_batch_items_run_concurrently(make_engine: MakeEngine, server: OpenAITestServer) -> None:
    engine = make_engine(concurrency=2, batch_size=4)
    server.delay_s = 0.2
    started = time.monotonic()
    results = engine.classify([request(i) for i in range(4)])
    assert time.monotonic() - started < 0.7
    assert all(r.assessment is not None for r in results)
    assert server.max_concurrent == 4


def test_works_behind_the_engine_window(make_engine: MakeEngine) -> None:
    engine = make_engine(concurrency=2, batch_size=3)
    window = EngineWindow(
        engine, batch_size=3, max_wait_ms=5, concurrency=2, timeout_s=10, retries=0
    )
    try:
        futures = [window.submit(request(i)) for i in range(7)]
        results = [f.result(10) for f in futures]
    finally:
        window.close()
    assert all(r.result.assessment is not None for r in results)


def test_close_cancels_in_flight_requests_and_leaves_no_threads(
    make_engine: MakeEngine, server: OpenAITestServer
) -> None:
    engine = make_engine(timeout_s=30)
    server.delay_s = 5.0
    results: list[list[EngineResult]] = []
    caller = threading.Thread(target=lambda: results.append(engine.classify([request()])))
    caller.start()
    deadline = time.monotonic() + 5
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    engine.close()
    caller.join(5)
    assert time.monotonic() - started < 3
    [[result]] = results
    assert result.error_code is ErrorCode.ENGINE_ERROR and "closed" in result.error_message
    assert not [t for t in threading.enumerate() if t.name == ENGINE_THREAD]
    engine.close()  # idempotent
    with pytest.raises(OpenAIEngineClosed):
        engine.classify([request()])
    with pytest.raises(OpenAIEngineClosed):
        engine.check()
    gc.collect()  # unclosed sockets or transports would surface here as errors


# -- the test server's own checks ----------------------------------------------------------------


def _post(server: OpenAITestServer, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client() as client:
        return client.post(f"{server.url}/chat/completions", content=json.dumps(body))


def _valid_body() -> dict[str, Any]:
    from moderator.engine.guard.prompting import image_data_url, openai_messages

    url = image_data_url(Image.new("RGB", (8, 8)))
    return {"model": MODEL, "messages": openai_messages("p", url), "max_tokens": 16}


@pytest.mark.parametrize(
    ("change", "status", "fragment"),
    [
        ({"guided_json": {}}, 400, "Unrecognized request argument supplied: guided_json"),
        ({"top_logprobs": 3}, 400, "logprobs must be set to true"),
        ({"model": "nope"}, 404, "does not exist"),
        ({"max_tokens": True}, 400, "max_tokens must be of type int"),
        ({"temperature": 3}, 400, "temperature must be between"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, 400, "name"),
        ({"stream": True}, 400, "does not stream"),
        (
            {"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}},
            ]}]},
            400,
            "data URL",
        ),
    ],
)  # fmt: skip
def test_server_rejects_what_the_documents_do_not_allow(
    server: OpenAITestServer, change: dict[str, Any], status: int, fragment: str
) -> None:
    response = _post(server, {**_valid_body(), **change})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"]


def test_server_answers_the_documented_shape(
    server: OpenAITestServer, backend: ScriptedBackend
) -> None:
    backend.push(completion_of(rating_tokens("Safe", -4.0, -0.02)))
    response = _post(server, {**_valid_body(), "logprobs": True, "top_logprobs": 2, "seed": 1})
    assert response.status_code == 200
    data = response.json()
    assert set(data) == {"id", "object", "created", "model", "choices", "usage"}
    assert data["object"] == "chat.completion" and data["model"] == MODEL
    [choice] = data["choices"]
    assert set(choice) == {"index", "message", "logprobs", "finish_reason"}
    assert choice["message"]["role"] == "assistant"
    entry = choice["logprobs"]["content"][4]
    assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
    assert len(entry["top_logprobs"]) == 2
    assert set(entry["top_logprobs"][0]) == {"token", "logprob", "bytes"}
    assert data["usage"]["total_tokens"] == 1200 + 7
    prompt, size, params = backend.calls[-1]
    assert prompt == "p" and size == (8, 8)
    assert params == CompletionParams(max_tokens=16, seed=1, logprobs=True, top_logprobs=2)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": {"message": "nested", "type": "BadRequestError", "code": 400}}, "nested"),
        ({"object": "error", "message": "flat", "type": "x", "code": 400}, "flat"),
        ({"detail": [{"loc": ["body", "top_logprobs"], "msg": "bad int"}]}, "body.top_logprobs"),
        ({"error": "plain\nstring"}, "plain string"),
    ],
)
def test_error_bodies_of_every_server_are_read(body: dict[str, Any], expected: str) -> None:
    assert expected in error_message(json.dumps(body).encode(), "Bad Request")
