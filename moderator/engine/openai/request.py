"""What the `openai` engine sends and how it reads the answers, with no I/O: chat-completion
request bodies, answers turned into EngineResults, token log-probabilities, and the error
bodies and headers of every supported server.

httpx is only named for type checking, so this module imports without the `openai` extra.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import structlog

from moderator.engine.base import EngineRequest, EngineResult
from moderator.engine.guard.output import result_from_output
from moderator.engine.guard.prompting import image_data_url, openai_messages
from moderator.engine.guard.schema import response_format, verdict_schema
from moderator.engine.guard.score import TokenLogprob, score_from_token_logprobs
from moderator.errors import ErrorCode
from moderator.masking import mask_passwords
from moderator.settings import GenerationSettings, OpenAISettings

if TYPE_CHECKING:
    import httpx

log = structlog.get_logger("moderator.engine.openai")

# The automatic answer cap (response_limit): the envelope, usage and slack, plus per generated
# token and per alternative a generous entry: its text JSON-escaped (up to ~16 characters, six
# bytes each), its log-probability and its byte list. With the defaults (512 tokens, 5
# alternatives) that is 2.5 MiB; a real answer is a small fraction of it.
RESPONSE_BASE_BYTES = 1 << 20
TOKEN_ENTRY_BYTES = 512


class ChatFormat:
    """How one engine's settings shape a chat-completion request, and how its answer becomes
    an EngineResult. `source` names the server in error messages."""

    def __init__(
        self,
        model: str,
        generation: GenerationSettings,
        options: OpenAISettings,
        *,
        source: str,
    ) -> None:
        self._model = model
        self._gen = generation
        self._openai = options
        self._source = source
        self._want_score = generation.score and options.logprobs
        structured = generation.structured and options.response_format != "none"
        self._other_models: set[str] = set()  # served names other than `model`, logged once
        self._request_record = {  # how the request was shaped beyond the generation settings
            "response_format": options.response_format if structured else "none",
            "top_logprobs": options.top_logprobs if self._want_score else None,
            "image_format": options.image_format,
        }

    def encode(self, request: EngineRequest) -> bytes | EngineResult:
        """The JSON body for one item, or its error result if the image cannot be encoded."""
        try:
            return json.dumps(self.body(request)).encode()
        except Exception as exc:
            return EngineResult(
                error_code=ErrorCode.ENGINE_ERROR,
                error_message=f"could not build the request: {describe(exc)}",
            )

    def body(self, request: EngineRequest) -> dict[str, Any]:
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

    def result(self, request: EngineRequest, data: dict[str, Any], attempts: int) -> EngineResult:
        """The EngineResult of one `chat.completion` answer that took `attempts` tries."""
        try:
            choice = data["choices"][0]
            message = choice["message"]
            content = message.get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            return EngineResult(
                error_code=ErrorCode.ENGINE_ERROR,
                error_message=f"{self._source} answered without choices[0].message",
            )
        served = _brief(data.get("model"))
        if served is not None and served != self._model and served not in self._other_models:
            self._other_models.add(served)
            log.warning("openai_served_model_differs", model=self._model, served_model=served)
        generation: dict[str, Any] = {
            **self._gen.record(),
            "served_model": served,
            "finish_reason": _brief(choice.get("finish_reason")),
            "attempts": attempts,
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


def response_limit(generation: GenerationSettings, options: OpenAISettings) -> int:
    """The most bytes one answer may have: `engine.openai.max_response_bytes`, or, unset, room
    for `max_new_tokens` tokens each with its log-probability entry and its alternatives."""
    if options.max_response_bytes is not None:
        return options.max_response_bytes
    per_token = 1 + (options.top_logprobs if generation.score and options.logprobs else 0)
    return RESPONSE_BASE_BYTES + generation.max_new_tokens * per_token * TOKEN_ENTRY_BYTES


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


def model_entries(body: bytes) -> list[dict[str, Any]] | None:
    """The entries of a `GET /models` answer's body; None if it is not a model list."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return None
    return entries


def shown_url(url: str) -> str:
    """`url` as messages show it (they reach verdicts, which tenants read): scheme, host, port
    and path only; no user, password, query string or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    return urlunsplit((parts.scheme, f"{host}{port}", parts.path, "", ""))


def error_message(raw: bytes, reason: str = "") -> str:
    """The server's error text from an error answer's body (`reason`, the status line's phrase,
    when it has none), one line: OpenAI and vLLM nest it under "error", lmdeploy and SGLang send
    it flat, FastAPI's request validation sends "detail"."""
    try:
        body = json.loads(raw)
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
        text = raw.decode("utf-8", "replace").strip()
        message = text or reason or "no details"
    return one_line(message)


def _detail(detail: Any) -> str:
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return f"{loc}: {first.get('msg', '')}".strip(": ")
    return str(detail)


def hint(message: str) -> str | None:
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


def retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds, if the server sent one as a number."""
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def describe(exc: BaseException) -> str:
    """An exception as one line: its type and message (URL passwords masked)."""
    text = one_line(mask_passwords(str(exc)))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def tries(attempts: int) -> str:
    return f"{attempts} attempt{'s' if attempts != 1 else ''}"


BRIEF_CHARS = 200


def _brief(value: Any) -> str | None:
    """A name the server sends, as the audit record keeps it: a string of at most BRIEF_CHARS
    characters, else None (the record must stay small whatever the server answers)."""
    return value[:BRIEF_CHARS] if isinstance(value, str) else None
