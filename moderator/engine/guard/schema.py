"""The verdict JSON schema, and the `response_format` bodies that ask a server to enforce it.

Constrained decoding (xgrammar and its kin) emits object properties in the schema's order, so the
properties are listed in the order the models were trained to answer: rating, category,
rationale. The rating then comes first, where its token log-probabilities give the score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from moderator.events.verdict import Rating

RATINGS: tuple[Rating, ...] = ("Safe", "Unsafe")
SCHEMA_NAME = "verdict"


def verdict_schema(categories: Sequence[str], rationale_max_chars: int) -> dict[str, Any]:
    """JSON Schema for `{"rating", "category", "rationale"}`; same input, same dict.

    The category enum is exactly the strings given (a tenant policy may offer fewer than ten);
    `maxLength` bounds the rationale so a rambling model stops well before the token limit.
    """
    if not categories:
        raise ValueError("the verdict schema needs at least one category")
    if len(set(categories)) != len(categories):
        raise ValueError("categories must be unique")
    if rationale_max_chars < 1:
        raise ValueError("rationale_max_chars must be positive")
    return {
        "type": "object",
        "properties": {
            "rating": {"type": "string", "enum": list(RATINGS)},
            "category": {"type": "string", "enum": list(categories)},
            "rationale": {"type": "string", "maxLength": rationale_max_chars},
        },
        "required": ["rating", "category", "rationale"],
        "additionalProperties": False,
    }


def response_format(
    schema: dict[str, Any], *, kind: Literal["json_schema", "json_object"] = "json_schema"
) -> dict[str, Any]:
    """The chat-completions `response_format` body for `schema` (or for any JSON object).

    All four servers take OpenAI's shape, `{"type": "json_schema", "json_schema": {"name",
    "schema", "strict"}}`, or `{"type": "json_object"}`:

    - OpenAI (API reference, chat `response_format`): `name` is required (a-z, A-Z, 0-9, `_`,
      `-`, at most 64 characters); `strict: true` enforces the schema, but in strict mode only a
      subset of JSON Schema is supported, so a keyword like `maxLength` may not be allowed. The
      hosted API is not a target here (the guard models are self-hosted).
    - vLLM (`vllm/entrypoints/openai/protocol.py`, `ResponseFormat`/`JsonSchemaResponseFormat`;
      docs "Structured Outputs"): type text | json_object | json_schema (plus structural_tag);
      `name` required, `schema`, `strict` optional. Its own `structured_outputs` extra parameter
      (formerly `guided_json`, removed in v0.12) is an alternative we do not use.
    - SGLang (`python/sglang/srt/entrypoints/openai/protocol.py`, `ResponseFormat`): the same
      three types (plus structural_tag); `name` required, `schema`, `strict` optional.
    - LMDeploy `api_server` (`lmdeploy/serve/openai/protocol.py`, `ResponseFormat`; docs
      "Structured output"): text | json_object | json_schema | regex_schema; `name` required,
      `strict` accepted but unused. The pipeline's `GenerationConfig(response_format=...)` takes
      the same dict. TurboMind compiles `json_schema.schema` with xgrammar and, if that fails,
      logs a warning and generates unconstrained, so the parser must stay defensive.

    The schema dict is placed in the body as is, not copied.
    """
    if kind == "json_object":
        return {"type": "json_object"}
    return {
        "type": "json_schema",
        "json_schema": {"name": SCHEMA_NAME, "schema": schema, "strict": True},
    }
