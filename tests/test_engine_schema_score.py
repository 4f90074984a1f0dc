from __future__ import annotations

import base64
import io
import json
import math

import pytest
from PIL import Image

from moderator.engine.guard.output import parse_output
from moderator.engine.guard.prompting import hf_messages, image_data_url, openai_messages
from moderator.engine.guard.schema import response_format, verdict_schema
from moderator.engine.guard.score import (
    TokenLogprob,
    normalised_unsafe,
    rating_value_span,
    score_from_token_logprobs,
)
from moderator.events.verdict import CATEGORIES

LOG = math.log

# --- schema --------------------------------------------------------------------------------------


def test_schema_shape_and_property_order() -> None:
    schema = verdict_schema(CATEGORIES, 1200)
    assert schema["type"] == "object"
    assert list(schema["properties"]) == ["rating", "category", "rationale"]
    assert schema["properties"]["rating"] == {"type": "string", "enum": ["Safe", "Unsafe"]}
    assert schema["properties"]["category"] == {"type": "string", "enum": list(CATEGORIES)}
    assert schema["properties"]["rationale"] == {"type": "string", "maxLength": 1200}
    assert schema["required"] == ["rating", "category", "rationale"]
    assert schema["additionalProperties"] is False


def test_schema_is_deterministic_and_json_serialisable() -> None:
    first = json.dumps(verdict_schema(CATEGORIES, 300))
    assert json.dumps(verdict_schema(list(CATEGORIES), 300)) == first
    assert json.loads(first) == verdict_schema(CATEGORIES, 300)


def test_schema_takes_a_tenant_subset_in_order() -> None:
    subset = (CATEGORIES[3], CATEGORIES[2], CATEGORIES[-1])
    assert verdict_schema(subset, 50)["properties"]["category"]["enum"] == list(subset)


@pytest.mark.parametrize(
    ("categories", "max_chars"),
    [((), 100), ((CATEGORIES[0], CATEGORIES[0]), 100), (CATEGORIES, 0)],
)
def test_schema_rejects_bad_input(categories: tuple[str, ...], max_chars: int) -> None:
    with pytest.raises(ValueError):
        verdict_schema(categories, max_chars)


def test_response_format_json_schema() -> None:
    schema = verdict_schema(CATEGORIES, 100)
    body = response_format(schema)
    assert body == {
        "type": "json_schema",
        "json_schema": {"name": "verdict", "schema": schema, "strict": True},
    }
    assert response_format(schema, kind="json_schema") == body
    json.dumps(body)


def test_response_format_json_object() -> None:
    assert response_format(verdict_schema(CATEGORIES, 100), kind="json_object") == {
        "type": "json_object"
    }


def test_output_that_fits_the_schema_parses() -> None:
    schema = verdict_schema(CATEGORIES, 100)
    for category in schema["properties"]["category"]["enum"]:
        for rating in schema["properties"]["rating"]["enum"]:
            text = json.dumps({"rating": rating, "category": category, "rationale": "r"})
            assert parse_output(text).category == category


# --- score ---------------------------------------------------------------------------------------


def tok(text: str, p: float, *top: tuple[str, float]) -> TokenLogprob:
    return TokenLogprob(text, LOG(p), tuple((t, LOG(q)) for t, q in top))


HEAD = [tok('{"', 1.0), tok("rating", 1.0), tok('":', 1.0), tok(' "', 1.0)]
TAIL = [tok('",', 1.0), tok(' "', 1.0), tok("category", 1.0)]


def test_normalisation_math() -> None:
    assert normalised_unsafe(LOG(0.3), LOG(0.6)) == pytest.approx(1 / 3)
    assert normalised_unsafe(LOG(0.6), LOG(0.3)) == pytest.approx(2 / 3)
    assert normalised_unsafe(-0.5, -0.5) == 0.5


def test_normalisation_is_stable_for_tiny_probabilities() -> None:
    assert normalised_unsafe(-1000.0, -1001.0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert normalised_unsafe(-1001.0, -1000.0) == pytest.approx(1 / (1 + math.exp(1)))
    assert normalised_unsafe(0.0, -800.0) == 1.0
    assert 0.0 <= normalised_unsafe(-800.0, 0.0) < 1e-300


@pytest.mark.parametrize(("lu", "ls"), [(math.nan, 0.0), (0.0, -math.inf), (math.inf, 0.0)])
def test_normalisation_needs_finite_input(lu: float, ls: float) -> None:
    with pytest.raises(ValueError):
        normalised_unsafe(lu, ls)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"rating": "Safe", "category": "NA"}', (12, "Safe")),
        ('{"rating":"Unsafe"}', (11, "Unsafe")),
        ('{ "rating" :\n "Unsafe" }', (15, "Unsafe")),
        ('```json\n{"rating": "Safe"}', (20, "Safe")),
        ('{"rating": "safe"}', None),
        ('{"rating": "Safer"}', None),
        ('{"rating": "Uns', None),
        ('{"category": "NA"}', None),
        ("", None),
    ],
)
def test_rating_value_span(text: str, expected: tuple[int, str] | None) -> None:
    assert rating_value_span(text) == expected
    if expected is not None:
        start, word = expected
        assert text[start : start + len(word)] == word


def test_score_single_token_words() -> None:
    tokens = [*HEAD, tok("Unsafe", 0.3, ("Safe", 0.6), ("Unsafe", 0.3), ("Un", 0.05)), *TAIL]
    assert score_from_token_logprobs(tokens) == pytest.approx(1 / 3)


def test_score_when_safe_was_chosen() -> None:
    tokens = [*HEAD, tok("Safe", 0.8, ("Safe", 0.8), ("Unsafe", 0.2)), *TAIL]
    assert score_from_token_logprobs(tokens) == pytest.approx(0.2)


def test_score_multi_token_chosen_word() -> None:
    tokens = [*HEAD, tok("Un", 0.5, ("Un", 0.5), ("Safe", 0.4)), tok("safe", 0.8), *TAIL]
    assert score_from_token_logprobs(tokens) == pytest.approx(0.4 / (0.4 + 0.4))


def test_score_last_token_runs_past_the_word() -> None:
    tokens = [*HEAD, tok("Un", 0.5, ("Safe", 0.5)), tok('safe",', 0.5), tok(' "', 1.0)]
    assert score_from_token_logprobs(tokens) == pytest.approx(0.25 / 0.75)


def test_score_leading_quote_merged_into_the_token() -> None:
    tokens = [
        tok('{"rating":', 1.0),
        tok(' "Safe', 0.9, (' "Safe', 0.9), (' "Unsafe', 0.1), (' "', 0.001)),
        tok('",', 1.0),
    ]
    assert score_from_token_logprobs(tokens) == pytest.approx(0.1)


def test_score_alternative_with_the_closing_quote() -> None:
    tokens = [tok('{"rating": "', 1.0), tok('Unsafe"', 0.6, ('Safe"', 0.3), ("Saf", 0.1))]
    assert score_from_token_logprobs(tokens) == pytest.approx(0.6 / 0.9)


def test_score_distinct_one_token_spellings_add_up() -> None:
    tokens = [*HEAD, tok("Unsafe", 0.5, ("Safe", 0.2), ('Safe"', 0.1), ("Safe", 0.2)), *TAIL]
    assert score_from_token_logprobs(tokens) == pytest.approx(0.5 / 0.8)


def test_score_none_when_alternative_missing_from_top() -> None:
    tokens = [*HEAD, tok("Unsafe", 0.9, ("Unsafe", 0.9), ("Un", 0.05)), *TAIL]
    assert score_from_token_logprobs(tokens) is None


def test_score_none_without_top_alternatives() -> None:
    assert score_from_token_logprobs([*HEAD, tok("Safe", 0.9), *TAIL]) is None


def test_score_none_when_alternative_needs_two_tokens() -> None:
    tokens = [*HEAD, tok("Safe", 0.7, ("Safe", 0.7), ("Un", 0.3)), *TAIL]
    assert score_from_token_logprobs(tokens) is None


def test_score_none_when_alternative_is_a_longer_word() -> None:
    tokens = [*HEAD, tok("Unsafe", 0.7, ("Safety", 0.2)), *TAIL]
    assert score_from_token_logprobs(tokens) is None


def test_score_none_when_lead_differs() -> None:
    tokens = [tok('{"rating":', 1.0), tok(' "Unsafe', 0.7, ("Safe", 0.2), (' "', 0.1))]
    assert score_from_token_logprobs(tokens) is None


def test_score_none_without_a_rating() -> None:
    assert score_from_token_logprobs([]) is None
    assert score_from_token_logprobs([tok("I cannot", 1.0), tok(" help", 1.0)]) is None
    lower = [*HEAD, tok("unsafe", 0.9, ("safe", 0.1)), *TAIL]
    assert score_from_token_logprobs(lower) is None


@pytest.mark.parametrize("bad", [math.nan, -math.inf])
def test_score_none_when_a_needed_logprob_is_not_finite(bad: float) -> None:
    chosen = [*HEAD, TokenLogprob("Unsafe", bad, (("Safe", LOG(0.5)),)), *TAIL]
    assert score_from_token_logprobs(chosen) is None
    alternative = [*HEAD, TokenLogprob("Unsafe", LOG(0.5), (("Safe", bad),)), *TAIL]
    assert score_from_token_logprobs(alternative) is None


def test_score_ignores_tokens_outside_the_rating() -> None:
    noisy = [tok('{"', 0.01), *HEAD[1:], tok("Safe", 0.8, ("Unsafe", 0.2)), tok('",', math.e**-50)]
    assert score_from_token_logprobs(noisy) == pytest.approx(0.2)


def test_score_skips_empty_tokens() -> None:
    tokens = [*HEAD, tok("", 1.0), tok("Unsafe", 0.5, ("Safe", 0.5)), *TAIL]
    assert score_from_token_logprobs(tokens) == pytest.approx(0.5)


# --- prompting -----------------------------------------------------------------------------------


def test_hf_messages_put_the_image_first() -> None:
    assert hf_messages("policy") == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "policy"}]}
    ]


def test_openai_messages_put_the_image_first() -> None:
    assert openai_messages("policy", "data:image/png;base64,AAAA") == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "policy"},
            ],
        }
    ]


def decode(url: str, mime: str) -> Image.Image:
    prefix = f"data:{mime};base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :], validate=True)))


@pytest.mark.parametrize(
    ("mode", "fmt", "mime"),
    [
        ("RGB", "PNG", "image/png"),
        ("RGBA", "PNG", "image/png"),
        ("P", "JPEG", "image/jpeg"),
        ("L", "JPEG", "image/jpeg"),
    ],
)
def test_image_data_url_round_trips(mode: str, fmt: str, mime: str) -> None:
    image = Image.new(mode, (37, 21))
    decoded = decode(image_data_url(image, fmt), mime)  # type: ignore[arg-type]
    assert decoded.size == (37, 21)
    assert decoded.mode == "RGB"
    assert decoded.format == fmt


def test_image_data_url_png_is_lossless() -> None:
    image = Image.new("RGB", (4, 3), (12, 200, 99))
    image.putpixel((1, 1), (1, 2, 3))
    decoded = decode(image_data_url(image), "image/png")
    assert decoded.tobytes() == image.tobytes()
