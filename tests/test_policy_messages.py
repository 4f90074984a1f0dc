"""Policy errors in plain words, with the closest valid key or value; category codes in any case.

Each reason keeps the `file:line: field.path: reason` form. The examples in docs/policies.md
("Error messages") are checked here against what the loader says, so the docs stay true.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from moderator.audit.read.filters import BadFilter, build_query, parse_category
from moderator.events.verdict import code_of
from moderator.policy.check import check
from moderator.policy.document import CODES, PolicyFile
from moderator.policy.load import PolicyError, load_text
from moderator.settings import TenancySettings
from tests.fuzz import fuzz_settings
from tests.policy_fixtures import default_yaml

KIDS = Path("policies/kids.yaml")
DOCS = (Path(__file__).parent.parent / "docs" / "policies.md").read_text(encoding="utf-8")
CATEGORY_KEYS = "action, allowed_text, block_at, can, mode, review_at, sensitive_text, should_not"


def problem(text: str) -> str:
    with pytest.raises(PolicyError) as info:
        load_text(text, KIDS)
    return str(info.value)


# Each file and the exact line docs/policies.md shows for it.
DOCUMENTED = [
    (
        "schema: 1\ncategories:\n  O4:\n    block_at: '0.9'\n",
        "policies/kids.yaml:4: categories.O4.block_at: must be a number from 0 to 1, not the "
        "string '0.9'",
    ),
    (
        "categories:\n  O1:\n    mode: default\n    action: block\n    should_not: [a]\n"
        "    can: Show art\n",
        "policies/kids.yaml:6: categories.O1.can: must be a list of strings, not the string "
        "'Show art' (write each item on its own line, starting with '- ')",
    ),
    (
        "categories:\n  O3:\n    mode: allow\n",
        "policies/kids.yaml:3: categories.O3.mode: 'allow' is not one of default, allowed, "
        "sensitive; did you mean 'allowed'?",
    ),
    (
        "# kids\n" * 9 + "categories:\n  O9:\n    block_at: 1.5\n",
        "policies/kids.yaml:12: categories.O9.block_at: must be from 0 to 1, not the number 1.5",
    ),
    (
        "owner: x\ncategories:\n  O3:\n    mode: default\n    blok_at: 0.5\n",
        "policies/kids.yaml:5: categories.O3.blok_at: unknown key 'blok_at'; did you mean "
        "'block_at'?",
    ),
    (
        "O3: {mode: allowed}\n",
        "policies/kids.yaml:1: O3: unknown key 'O3': a category's settings go under 'categories'",
    ),
    (
        "on_error:\n  default: review\n  engine_eror: block\n",
        "policies/kids.yaml:3: on_error.engine_eror: unknown error code 'engine_eror'; did you "
        "mean 'engine_error'?",
    ),
    (
        "description: x\nowner: no\n",
        "policies/kids.yaml:2: owner: must be a string, not false (quote it: YAML reads yes, "
        "no, on, off, true and false as true or false)",
    ),
]


@pytest.mark.parametrize(("text", "line"), DOCUMENTED)
def test_the_documented_messages_are_what_the_loader_says(text: str, line: str) -> None:
    assert problem(text) == line
    assert f"`{line}`" in DOCS  # docs/policies.md shows the same line


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        # Wrong types, said as what the key takes and what the file has.
        (
            "allowed:\n  buckets: uploads\n",
            2,
            "allowed.buckets: must be a list of strings, not the string 'uploads' (write each "
            "item on its own line, starting with '- ')",
        ),
        ("extends: [a, b]\n", 1, "extends: must be a string, not a list"),
        (
            "description: 5\n",
            1,
            "description: must be a string, not the number 5 (quote it to make it a string)",
        ),
        (
            "dsa:\n  review_restricts_visibility: 'yes'\n",
            2,
            "dsa.review_restricts_visibility: must be true or false, not the string 'yes'",
        ),
        (
            "categories: [O1]\n",
            1,
            "categories: must be a mapping keyed by category codes (O1..O9), not a list",
        ),
        (
            "categories:\n  O1:\n",
            2,
            f"categories.O1: must be a mapping (keys: {CATEGORY_KEYS}), not an empty value",
        ),
        ("schema: 2\n", 1, "schema: must be 1, not the number 2"),
        # Values outside a closed set, with the closest one.
        (
            "none_applying:\n  action: blok\n",
            2,
            "none_applying.action: 'blok' is not one of allow, review, block; did you mean "
            "'block'?",
        ),
        (
            "categories:\n  O2:\n    mode: Sensitive\n",
            3,
            "categories.O2.mode: 'Sensitive' is not one of default, allowed, sensitive; did you "
            "mean 'sensitive'?",
        ),
        ("on_error: maybe\n", 1, "on_error: 'maybe' is not one of allow, review, block"),
        # on_error is an action or a mapping: a mapping is judged as a mapping, at its line.
        (
            "on_error:\n  default: review\n  engine_error: revew\n",
            3,
            "on_error.engine_error: 'revew' is not one of allow, review, block; did you mean "
            "'review'?",
        ),
        (
            "on_error: 5\n",
            1,
            "on_error: must be one of allow, review, block or a mapping keyed by error codes, "
            "not the number 5",
        ),
        # Unknown keys: the closest valid key, else the keys there are.
        (
            "categorys:\n  O1: {}\n",
            1,
            "categorys: unknown key 'categorys'; did you mean 'categories'?",
        ),
        (
            "allowed:\n  bucket: [a]\n",
            2,
            "allowed.bucket: unknown key 'bucket'; did you mean 'buckets'?",
        ),
        (
            "surfaces:\n  avatar:\n    categoris: {}\n",
            3,
            "surfaces.avatar.categoris: unknown key 'categoris'; did you mean 'categories'?",
        ),
        (
            "categories:\n  O2:\n    colour: red\n",
            3,
            f"categories.O2.colour: unknown key 'colour'; the keys here are {CATEGORY_KEYS}",
        ),
        # Ranges.
        (
            "none_applying:\n  review_at: -0.5\n",
            2,
            "none_applying.review_at: must be from 0 to 1, not the number -0.5",
        ),
        # Category names and NA where a code belongs.
        (
            "categories:\n  Sexual Content: {mode: allowed}\n",
            2,
            "categories.Sexual Content: unknown category 'Sexual Content': write its code, O3",
        ),
        (
            "categories:\n  na: {action: block}\n",
            2,
            "categories.na: 'na' (None applying) is not set here: use the none_applying key",
        ),
        (
            "dsa:\n  categories:\n    nudity content: STATEMENT_CATEGORY_OTHER_VIOLATION_TC\n",
            3,
            "dsa.categories.nudity content: unknown category 'nudity content': write its code, O4",
        ),
    ],
)
def test_plain_words_at_the_line_of_the_key(text: str, line: int, reason: str) -> None:
    assert problem(text) == f"{KIDS}:{line}: {reason}"


def test_category_codes_are_read_in_either_case() -> None:
    policy = load_text(
        "categories:\n  o3: {mode: allowed}\n  O4: {action: review}\n"
        "surfaces:\n  avatar:\n    categories:\n      o6: {mode: sensitive}\n"
        "dsa:\n  categories:\n    o2: STATEMENT_CATEGORY_VIOLENCE\n"
        "    na: STATEMENT_CATEGORY_OTHER_VIOLATION_TC\n",
        KIDS,
    )
    assert sorted(policy.categories) == ["O3", "O4"]
    assert policy.categories["O3"].mode == "allowed"
    assert list(policy.surfaces["avatar"].categories) == ["O6"]
    assert policy.dsa is not None
    assert policy.dsa.categories == {
        "O2": "STATEMENT_CATEGORY_VIOLENCE",
        "NA": "STATEMENT_CATEGORY_OTHER_VIOLATION_TC",
    }
    # Built from a mapping instead of YAML, the same.
    assert list(PolicyFile.model_validate({"categories": {"o9": {}}}).categories) == ["O9"]


def test_errors_inside_a_lower_case_category_point_at_its_line() -> None:
    assert problem("owner: a\ncategories:\n  o3:\n    mode: alow\n") == (
        f"{KIDS}:4: categories.o3.mode: 'alow' is not one of default, allowed, sensitive; did "
        "you mean 'allowed'?"
    )
    assert problem("surfaces:\n  avatar:\n    categories:\n      o6:\n        block_at: 3\n") == (
        f"{KIDS}:5: surfaces.avatar.categories.o6.block_at: must be from 0 to 1, not the number 3"
    )


def test_one_code_twice_in_two_cases_is_a_duplicate() -> None:
    assert problem("categories:\n  o3: {mode: allowed}\n  O3: {mode: sensitive}\n") == (
        f"{KIDS}:3: categories.O3: duplicate category 'O3': o3 names the same one (codes are "
        "read in either case)"
    )


def test_a_rule_across_files_finds_a_lower_case_key(tmp_path: Path) -> None:
    (tmp_path / "default.yaml").write_text(default_yaml(), encoding="utf-8")
    (tmp_path / "base.yaml").write_text("categories:\n  O5: {block_at: 0.5}\n", encoding="utf-8")
    (tmp_path / "kids.yaml").write_text(
        "extends: base\nowner: a\ncategories:\n  o5:\n    review_at: 0.9\n", encoding="utf-8"
    )
    result = check(tmp_path, TenancySettings())
    assert result.errors == (
        f"{tmp_path / 'kids.yaml'}:4: categories.O5: review_at 0.9 (kids.yaml, top level) is "
        "above block_at 0.5 (base.yaml, top level) once merged",
    )


@pytest.mark.parametrize(
    ("typed", "code"),
    [
        ("O4", "O4"),
        ("o4", "O4"),
        (" o4 ", "O4"),
        ("Nudity Content", "O4"),
        ("nudity   content", "O4"),
        ("o4: nudity content", "O4"),
        ("na", "NA"),
        ("None Applying", "NA"),
        ("NA: none applying", "NA"),
        ("O4: Sexual Content", None),  # a code and a name that disagree
        ("O10", None),
        ("nudity", None),
        ("", None),
    ],
)
def test_code_of_reads_codes_and_names_in_any_case(typed: str, code: str | None) -> None:
    assert code_of(typed) == code


@pytest.mark.parametrize(
    ("typed", "value"),
    [
        ("nudity content", "O4"),
        ("none applying", "NA"),
        ("o4: nudity content", "O4: Nudity Content"),
        ("o4: another wording", "O4: another wording"),  # kept for an exact match, code upper
        ("O42", None),
        ("nudity", None),
        ("x: Nudity Content", None),
        ("", None),
    ],
)
def test_the_audit_category_filter_reads_codes_and_names_in_any_case(
    typed: str, value: str | None
) -> None:
    """`audit query --category` and the API's `category` parameter (one parser for both)."""
    if value is None:
        with pytest.raises(BadFilter, match=r"^category: unknown category"):
            parse_category("category", typed)
    else:
        assert parse_category("category", typed) == value
        assert build_query({"category": typed}).category == value


# -- no pydantic wording reaches a user --------------------------------------------------------

_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-2, 2),
    st.text(max_size=12),
    st.sampled_from(["allow", "blok", "Sensitive", "O3", "o3", "na", "revew"]),
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
    st.dictionaries(st.sampled_from(["x", "mode", "o3"]), st.integers(), max_size=2),
)
_category = st.dictionaries(
    st.sampled_from([*CATEGORY_KEYS.split(", "), "colour", "blok_at"]), _values, max_size=3
)
_codes = st.sampled_from([*CODES, "o3", "NA", "na", "O10", "Nudity Content"])
_documents = st.fixed_dictionaries(
    {},
    optional={
        "schema": _values,
        "extends": _values,
        "owner": _values,
        "categories": st.dictionaries(_codes, _category, max_size=3) | _values,
        "none_applying": st.dictionaries(st.sampled_from(["action", "review_at", "x"]), _values)
        | _values,
        "surfaces": st.dictionaries(
            st.sampled_from(["avatar", "Bad Name"]),
            st.dictionaries(
                st.sampled_from(["categories", "on_error", "categoris"]),
                st.dictionaries(_codes, _category, max_size=2) | _values,
            ),
            max_size=2,
        ),
        "allowed": st.dictionaries(st.sampled_from(["buckets", "bucket"]), _values) | _values,
        "on_error": st.dictionaries(
            st.sampled_from(["default", "engine_error", "engine_eror"]), _values, max_size=2
        )
        | _values,
        "dsa": st.dictionaries(
            st.sampled_from(["categories", "review_restricts_visibility"]),
            st.dictionaries(_codes, _values, max_size=2) | _values,
        ),
        "categorys": _values,
    },
)


@pytest.mark.fuzz
@fuzz_settings(300)
@given(_documents)
def test_no_reason_is_in_pydantic_wording(doc: dict[str, Any]) -> None:
    try:
        load_text(yaml.safe_dump(doc), KIDS)
    except PolicyError as err:
        assert err.line is not None and err.line >= 1
        for wording in ("Input should be", "Value error", "valid tuple", "instance of"):
            assert wording not in err.reason, err.reason


def test_allow_for_every_error_is_told_to_write_the_map() -> None:
    found = problem("on_error: allow\n")
    assert found.startswith(f"{KIDS}:1: on_error: allow for every error would allow the security")
    assert "{default: allow, corrupt_image: review," in found


def test_a_map_allowing_by_default_names_only_the_security_errors_it_misses() -> None:
    codes = ("corrupt_image", "decode_timeout", "decompression_bomb", "object_too_large")
    kept = "".join(f"  {code}: block\n" for code in codes)
    found = problem(f"on_error:\n  default: allow\n{kept}")
    assert found.endswith(
        "on_error allows by default: name the security errors it would allow (tenant_mismatch, "
        "unknown_tenant, unsupported_format) with review or block"
    )


def test_a_control_character_is_reported_at_its_texts_line() -> None:
    text = 'owner: a\ncategories:\n  O1:\n    should_not:\n      - fine\n      - "cut\\x1bhere"\n'
    assert problem(text) == (
        f"{KIDS}:6: categories.O1.should_not[1]: holds the control character \\x1b"
    )
