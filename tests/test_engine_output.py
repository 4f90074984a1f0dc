from __future__ import annotations

import contextlib
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moderator.engine.guard.output import (
    TRUNCATED_MARKER,
    ParsedOutput,
    UnparseableOutput,
    parse_output,
    result_from_output,
)
from moderator.errors import ErrorCode
from moderator.events.verdict import CATEGORIES, Rating

O2 = "O2: Violence, Harm, or Cruelty"
O3 = "O3: Sexual Content"
O4 = "O4: Nudity Content"
NA = "NA: None applying"


def verdict(rating: str, category: str, rationale: str) -> str:
    return json.dumps({"rating": rating, "category": category, "rationale": rationale})


GOOD: list[tuple[str, str, tuple[Rating, str, str]]] = [
    (
        "plain",
        '{"rating": "Safe", "category": "NA: None applying", "rationale": "A dog on a beach."}',
        ("Safe", NA, "A dog on a beach."),
    ),
    (
        "compact",
        '{"rating":"Unsafe","category":"O4: Nudity Content","rationale":"Bare breasts."}',
        ("Unsafe", O4, "Bare breasts."),
    ),
    (
        "pretty printed",
        '{\n  "rating": "Unsafe",\n  "category": "O2: Violence, Harm, or Cruelty",\n'
        '  "rationale": "A bloody fight."\n}',
        ("Unsafe", O2, "A bloody fight."),
    ),
    (
        "json fence",
        '```json\n{"rating": "Safe", "category": "NA: None applying", "rationale": "Cat."}\n```',
        ("Safe", NA, "Cat."),
    ),
    (
        "bare fence",
        '```\n{"rating": "Safe", "category": "NA: None applying", "rationale": "Cat."}\n```\n',
        ("Safe", NA, "Cat."),
    ),
    (
        "prose before",
        'Here is my assessment of the image:\n{"rating": "Unsafe", "category": "O3: Sexual '
        'Content", "rationale": "Explicit act."}',
        ("Unsafe", O3, "Explicit act."),
    ),
    (
        "prose after",
        '{"rating": "Safe", "category": "NA: None applying", "rationale": "Food."}\n\n'
        "I hope this helps! Let me know {if} you need more.",
        ("Safe", NA, "Food."),
    ),
    (
        "prose with stray brace before",
        'Sure { here goes: {"rating": "Safe", "category": "NA", "rationale": "Tree."}',
        ("Safe", NA, "Tree."),
    ),
    (
        "closing brace in rationale",
        '{"rating": "Safe", "category": "NA: None applying", "rationale": "A sign reads }{ ok"}',
        ("Safe", NA, "A sign reads }{ ok"),
    ),
    (
        "escaped quotes and braces in rationale",
        '{"rating": "Unsafe", "category": "O2: Violence, Harm, or Cruelty", '
        '"rationale": "The caption says \\"{kill}\\" in red."}',
        ("Unsafe", O2, 'The caption says "{kill}" in red.'),
    ),
    (
        "escaped newline in rationale",
        '{"rating": "Safe", "category": "NA: None applying", "rationale": "Line one.\\nTwo."}',
        ("Safe", NA, "Line one.\nTwo."),
    ),
    (
        "raw newline in rationale",
        '{"rating": "Safe", "category": "NA: None applying", "rationale": "Line one.\nTwo."}',
        ("Safe", NA, "Line one.\nTwo."),
    ),
    (
        "unicode rationale",
        '{"rating": "Safe", "category": "NA: None applying", "rationale": "Ein Café 🍰 — 安全"}',
        ("Safe", NA, "Ein Café 🍰 — 安全"),
    ),
    (
        "unicode escapes",
        '{"rating": "Safe", "category": "NA: None applying", '
        '"rationale": "caf\\u00e9 \\ud83c\\udf70"}',
        ("Safe", NA, "café 🍰"),
    ),
    (
        "wrong key order",
        '{"rationale": "Gun on a table.", "category": "O6: Weapons or Substance Abuse", '
        '"rating": "Unsafe"}',
        ("Unsafe", "O6: Weapons or Substance Abuse", "Gun on a table."),
    ),
    (
        "extra key ignored",
        '{"rating": "Safe", "category": "NA: None applying", "rationale": "Park.", "score": 0.1}',
        ("Safe", NA, "Park."),
    ),
    (
        "lower-case rating",
        '{"rating": "unsafe", "category": "O7: Self-Harm", "rationale": "Cuts on an arm."}',
        ("Unsafe", "O7: Self-Harm", "Cuts on an arm."),
    ),
    (
        "upper-case rating with spaces",
        '{"rating": " SAFE ", "category": "NA: None applying", "rationale": "Sky."}',
        ("Safe", NA, "Sky."),
    ),
    (
        "capitalised keys",
        '{"Rating": "Safe", "Category": "NA: None applying", "Rationale": "Sky."}',
        ("Safe", NA, "Sky."),
    ),
    (
        "code-only category",
        '{"rating": "Unsafe", "category": "O4", "rationale": "Nude figure."}',
        ("Unsafe", O4, "Nude figure."),
    ),
    (
        "code-only NA",
        '{"rating": "Safe", "category": "NA", "rationale": "Nothing."}',
        ("Safe", NA, "Nothing."),
    ),
    (
        "category case and whitespace",
        '{"rating": "Unsafe", "category": "o8 :  animal   cruelty", "rationale": "Kicked dog."}',
        ("Unsafe", "O8: Animal Cruelty", "Kicked dog."),
    ),
    (
        "missing rationale",
        '{"rating": "Safe", "category": "NA: None applying"}',
        ("Safe", NA, ""),
    ),
    (
        "trailing comma",
        '{"rating": "Safe", "category": "NA: None applying", "rationale": "Fine, really.",}',
        ("Safe", NA, "Fine, really."),
    ),
    (
        "python dict quotes",
        "{'rating': 'Unsafe', 'category': 'O5: Criminal Planning', 'rationale': \"Lock-pick "
        "guide, it's {clear}.\"}",
        ("Unsafe", "O5: Criminal Planning", "Lock-pick guide, it's {clear}."),
    ),
    (
        "python dict with escaped quote",
        "{'rating': 'Safe', 'category': 'NA', 'rationale': 'A child\\'s drawing.'}",
        ("Safe", NA, "A child's drawing."),
    ),
    (
        "two objects: first with a rating wins",
        '{"rating": "Unsafe", "category": "O1: Hate, Humiliation, Harassment", "rationale": "A"}'
        '\n{"rating": "Safe", "category": "NA: None applying", "rationale": "B"}',
        ("Unsafe", "O1: Hate, Humiliation, Harassment", "A"),
    ),
    (
        "object without rating, then verdict",
        '{"image": "photo.jpg"} {"rating": "Safe", "category": "NA", "rationale": "B"}',
        ("Safe", NA, "B"),
    ),
    (
        "nested verdict object",
        '{"verdict": {"rating": "Unsafe", "category": "O9: Disasters or Emergencies", '
        '"rationale": "Flooded town."}}',
        ("Unsafe", "O9: Disasters or Emergencies", "Flooded town."),
    ),
    (
        "verdict inside a JSON list",
        '[{"rating": "Safe", "category": "NA: None applying", "rationale": "Lake."}]',
        ("Safe", NA, "Lake."),
    ),
    (
        "truncated mid-rationale",
        '{"rating": "Unsafe", "category": "O3: Sexual Content", "rationale": "The image shows',
        ("Unsafe", O3, f"The image shows {TRUNCATED_MARKER}"),
    ),
    (
        "truncated inside an escape",
        '{"rating": "Unsafe", "category": "O3: Sexual Content", "rationale": "A caf\\u00',
        ("Unsafe", O3, f"A caf {TRUNCATED_MARKER}"),
    ),
    (
        "truncated before rationale",
        '{"rating": "Unsafe", "category": "O3: Sexual Content", "rat',
        ("Unsafe", O3, TRUNCATED_MARKER),
    ),
    (
        "truncated in a fence",
        '```json\n{"rating": "Safe", "category": "NA: None applying", "rationale": "Calm ',
        ("Safe", NA, f"Calm  {TRUNCATED_MARKER}"),
    ),
    (
        "missing closing brace after complete rationale",
        '{"rating": "Safe", "category": "NA: None applying", "rationale": "Done."',
        ("Safe", NA, "Done."),
    ),
]

BAD: list[tuple[str, str, str]] = [
    ("empty string", "", "empty output"),
    ("whitespace only", "  \n\t", "empty output"),
    ("only prose", "The image appears to be safe.", "no JSON object"),
    ("prose with braces", "Use {curly} braces {like this}.", "no JSON object"),
    ("unquoted keys", "{rating: Safe, category: NA}", "no JSON object"),
    ("JSON list of strings", '["Safe", "NA: None applying"]', "no JSON object"),
    ("missing rating", '{"category": "NA: None applying", "rationale": "x"}', "rating missing"),
    ("missing category", '{"rating": "Safe", "rationale": "x"}', "category missing"),
    (
        "rating Maybe",
        '{"rating": "Maybe", "category": "NA: None applying", "rationale": "x"}',
        "invalid rating 'Maybe'",
    ),
    (
        "rating with extra words",
        '{"rating": "Unsafe content", "category": "O4", "rationale": "x"}',
        "invalid rating",
    ),
    ("rating boolean", '{"rating": true, "category": "NA", "rationale": "x"}', "not a string"),
    ("rating null", '{"rating": null, "category": "NA", "rationale": "x"}', "not a string"),
    ("category list", '{"rating": "Unsafe", "category": ["O1", "O2"]}', "not a string"),
    ("rationale number", '{"rating": "Safe", "category": "NA", "rationale": 3}', "not a string"),
    (
        "unknown category O10",
        '{"rating": "Unsafe", "category": "O10: Spam", "rationale": "x"}',
        "unknown category 'O10: Spam'",
    ),
    (
        "right code, wrong name",
        '{"rating": "Unsafe", "category": "O4: Nudity", "rationale": "x"}',
        "unknown category 'O4: Nudity'",
    ),
    ("name without code", '{"rating": "Unsafe", "category": "Nudity Content"}', "unknown category"),
    (
        "duplicate rating key",
        '{"rating": "Safe", "rating": "Unsafe", "category": "NA", "rationale": "x"}',
        "duplicate key 'rating'",
    ),
    ("truncated mid-category", '{"rating": "Unsafe", "category": "O3: Sex', "truncated"),
    ("truncated mid-rating", '{"rating": "Uns', "truncated"),
    ("truncated after brace", "```json\n{", "truncated"),
    (
        "truncated with unknown category",
        '{"rating": "Unsafe", "category": "O12: Foo", "rationale": "The',
        "unknown category 'O12: Foo'",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in GOOD], ids=[n for n, _, _ in GOOD]
)
def test_parses_real_world_outputs(text: str, expected: tuple[Rating, str, str]) -> None:
    assert parse_output(text) == ParsedOutput(*expected)


@pytest.mark.parametrize(
    ("text", "reason"), [(t, r) for _, t, r in BAD], ids=[n for n, _, _ in BAD]
)
def test_rejects_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(UnparseableOutput) as info:
        parse_output(text)
    assert reason in info.value.message
    assert info.value.code is ErrorCode.UNPARSEABLE_OUTPUT


def test_corpus_is_large_enough() -> None:
    assert len(GOOD) + len(BAD) >= 35


def test_only_the_given_categories_are_accepted() -> None:
    tenant = (O3, O4, NA)
    assert parse_output(verdict("Unsafe", "O4", "x"), tenant).category == O4
    with pytest.raises(UnparseableOutput, match="unknown category"):
        parse_output(verdict("Unsafe", O2, "x"), tenant)


def test_ambiguous_code_is_unknown() -> None:
    odd = ("O1: First", "O1: Second", NA)
    assert parse_output(verdict("Unsafe", "O1: second", "x"), odd).category == "O1: Second"
    with pytest.raises(UnparseableOutput, match="unknown category 'O1'"):
        parse_output(verdict("Unsafe", "O1", "x"), odd)


def test_lone_surrogate_in_rationale_is_replaced() -> None:
    parsed = parse_output('{"rating": "Safe", "category": "NA", "rationale": "a\\ud800b"}')
    parsed.rationale.encode("utf-8")
    assert parsed.rationale.startswith("a") and parsed.rationale.endswith("b")


def test_long_values_are_shortened_in_the_message() -> None:
    with pytest.raises(UnparseableOutput) as info:
        parse_output(verdict("Unsafe", "X" * 500, "x"))
    assert len(info.value.message) < 100


def test_many_braces_stay_cheap() -> None:
    with pytest.raises(UnparseableOutput):
        parse_output("{" * 20_000 + '"rating": "Safe"')
    assert parse_output('{"a":' * 5 + verdict("Safe", NA, "x") + "}" * 5).rating == "Safe"


# --- result_from_output --------------------------------------------------------------------------


def test_result_with_assessment_keeps_raw_output_and_generation() -> None:
    text = verdict("Unsafe", O4, "Nude.")
    result = result_from_output(text, CATEGORIES, score=0.91, generation={"temperature": 0.0})
    assert result.assessment is not None
    assert result.assessment.rating == "Unsafe"
    assert result.assessment.category == O4
    assert result.assessment.rationale == "Nude."
    assert result.assessment.score == 0.91
    assert result.error_code is None
    assert result.raw_output == text
    assert result.generation == {"temperature": 0.0}


@pytest.mark.parametrize("score", [None, -0.01, 1.5, math.nan, math.inf])
def test_result_drops_a_score_outside_the_unit_interval(score: float | None) -> None:
    result = result_from_output(verdict("Safe", NA, ""), CATEGORIES, score=score, generation={})
    assert result.assessment is not None
    assert result.assessment.score is None


@pytest.mark.parametrize("score", [0.0, 1.0])
def test_result_keeps_boundary_scores(score: float) -> None:
    result = result_from_output(verdict("Safe", NA, ""), CATEGORIES, score=score, generation={})
    assert result.assessment is not None and result.assessment.score == score


def test_result_error_keeps_raw_output() -> None:
    text = "I cannot help with that."
    result = result_from_output(text, CATEGORIES, score=0.5, generation={"seed": 1})
    assert result.assessment is None
    assert result.error_code is ErrorCode.UNPARSEABLE_OUTPUT
    assert result.error_message == "no JSON object"
    assert result.raw_output == text
    assert result.generation == {"seed": 1}


# --- properties ----------------------------------------------------------------------------------

ratings = st.sampled_from(["Safe", "Unsafe"])
categories = st.sampled_from(CATEGORIES)


@given(st.text())
def test_arbitrary_text_only_raises_unparseable(text: str) -> None:
    with contextlib.suppress(UnparseableOutput):
        parse_output(text)


@given(st.text(alphabet=st.sampled_from("{}[]\"'\\:, \nratingSafe"), max_size=80))
def test_json_like_noise_only_raises_unparseable(text: str) -> None:
    with contextlib.suppress(UnparseableOutput):
        parse_output(text)


@given(ratings, categories, st.text(), st.booleans(), st.sampled_from([None, 2]))
def test_round_trips_valid_verdicts(
    rating: str, category: str, rationale: str, ascii_only: bool, indent: int | None
) -> None:
    doc = {"rating": rating, "category": category, "rationale": rationale}
    text = json.dumps(doc, ensure_ascii=ascii_only, indent=indent)
    assert parse_output(text) == ParsedOutput(rating, category, rationale)  # type: ignore[arg-type]


@given(ratings, categories, st.text(max_size=40), st.data())
def test_any_prefix_keeps_the_verdict_or_fails_cleanly(
    rating: str, category: str, rationale: str, data: st.DataObject
) -> None:
    text = json.dumps({"rating": rating, "category": category, "rationale": rationale})
    cut = data.draw(st.integers(min_value=0, max_value=len(text)))
    try:
        parsed = parse_output(text[:cut])
    except UnparseableOutput:
        return
    assert (parsed.rating, parsed.category) == (rating, category)
    if parsed.rationale == rationale:
        return
    assert parsed.rationale.endswith(TRUNCATED_MARKER)
    partial = parsed.rationale.removesuffix(TRUNCATED_MARKER).removesuffix(" ")
    assert rationale.startswith(partial)
