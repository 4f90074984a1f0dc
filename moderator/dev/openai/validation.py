"""Strict validation of chat-completion requests for the devstack test server: only the
portable subset of the documented request shape (fields OpenAI, lmdeploy, vLLM and SGLang all
document) passes, anything else is a RequestRejected that the server answers as an
OpenAI-style error. No I/O: the data-URL image is decoded in memory.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from PIL.Image import Image

from moderator.dev.openai.protocol import ACCEPTED_FIELDS, CompletionParams, RequestRejected

_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DATA_URL = re.compile(r"^data:image/(png|jpeg|jpg|webp|gif);base64,(.*)$", re.DOTALL)


def validate_request(
    body: Any, *, model: str, max_top_logprobs: int, logprobs_supported: bool
) -> tuple[str, Image, CompletionParams]:
    """The user turn's prompt and image and the generation parameters of a chat-completion
    body; RequestRejected (an OpenAI-style 400 or 404) if it breaks the portable shape.

    `max_top_logprobs` is the server's ceiling for `top_logprobs`; without
    `logprobs_supported` asking for log-probabilities is a 400.
    """
    if not isinstance(body, dict):
        raise RequestRejected("the request body must be a JSON object")
    unknown = sorted(set(body) - ACCEPTED_FIELDS)
    if unknown:
        raise RequestRejected(
            f"Unrecognized request argument supplied: {', '.join(unknown)}",
            param=unknown[0],
            code="unknown_parameter",
        )
    requested = _typed(body, "model", str, required=True)
    if requested != model:
        raise RequestRejected(
            f"The model '{requested}' does not exist.",
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
        if not 0 <= top_logprobs <= max_top_logprobs:
            raise RequestRejected(
                f"top_logprobs must be between 0 and {max_top_logprobs}",
                param="top_logprobs",
            )
        if top_logprobs > 0 and not logprobs:
            raise RequestRejected(
                "when using top_logprobs, logprobs must be set to true", param="top_logprobs"
            )
    if (logprobs or top_logprobs) and not logprobs_supported:
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
