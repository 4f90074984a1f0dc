"""The policy loader: YAML → PolicyFile, every failure a PolicyError with file, line and reason."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from moderator.errors import ConfigError
from moderator.policy.document import CODES, PolicyFile
from moderator.policy.load import MAX_BYTES, MAX_DEPTH, PolicyError, load_file, load_text
from tests.fuzz import fuzz_settings
from tests.policy_fixtures import default_yaml

P = Path("policies/acme.yaml")


def error(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_text(text, P)
    return info.value


def test_error_message_format_and_pickling() -> None:
    with_line = PolicyError(P, 3, "bad")
    assert str(with_line) == "policies/acme.yaml:3: bad"
    assert isinstance(with_line, ConfigError)
    assert str(PolicyError(P, None, "bad")) == "policies/acme.yaml: bad"
    copy = pickle.loads(pickle.dumps(with_line))  # noqa: S301 - our own object
    assert (copy.path, copy.line, copy.reason) == (P, 3, "bad")


EMPTY = (
    "the file is empty: a policy file is a mapping of keys (write {} for a tenant that keeps "
    "every inherited value)"
)


@pytest.mark.parametrize("text", ["", "\n", "  \n\n", "# only a comment\n", "---\n", "---\n...\n"])
def test_an_empty_file_is_no_policy(text: str) -> None:
    """A truncated file must not read as `{}`: its tenant would silently lose its settings."""
    err = error(text)
    assert (err.line, err.reason) == (None, EMPTY)
    assert str(err) == f"{P}: {EMPTY}"


@pytest.mark.parametrize("text", ["null\n", "~", "# a comment\nNULL\n"])
def test_a_null_document_is_no_policy(text: str) -> None:
    err = error(text)
    written = text.splitlines()[-1]
    assert err.reason == EMPTY.replace("the file is empty", f"the file holds only {written!r}")
    assert err.line == len(text.splitlines())


def test_an_empty_mapping_is_a_policy_that_inherits_everything() -> None:
    assert load_text("{}\n", P) == PolicyFile()
    assert load_text("# inherits everything\n{}\n", P) == PolicyFile()


def test_a_complete_file_loads() -> None:
    text = default_yaml() + (
        "extends: null\n"
        "schema: 1\n"
        "none_applying: {action: review, review_at: 0.4}\n"
        "surfaces:\n  profile_photo:\n    categories: {O4: {mode: sensitive}}\n"
        "allowed: {buckets: [uploads], prefixes: [acme/]}\n"
        "on_error: {default: block, engine_timeout: review}\n"
        "dsa: {categories: {O4: STATEMENT_CATEGORY_OTHER_VIOLATION_TC},\n"
        "      review_restricts_visibility: true}\n"
    )
    policy = load_text(text, P)
    assert set(policy.categories) == set(CODES)
    assert policy.categories["O2"].should_not == ("show O2 material",)
    assert policy.surfaces["profile_photo"].categories["O4"].mode == "sensitive"
    assert policy.on_error == {"default": "block", "engine_timeout": "review"}
    assert policy.dsa is not None and policy.dsa.review_restricts_visibility


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (
            "categories:\n  O3:\n    block_at: 1.5\n",
            3,
            "categories.O3.block_at: must be from 0 to 1, not the number 1.5",
        ),
        (
            "owner: x\ncategories:\n  O3:\n    mode: default\n    blok_at: 0.5\n",
            5,
            "categories.O3.blok_at: unknown key 'blok_at'; did you mean 'block_at'?",
        ),
        (
            "categories:\n  O1: {}\n  O10: {}\n",
            3,
            "categories.O10: unknown category 'O10': use O1..O9 (NA is none_applying)",
        ),
        (
            "\n\non_error: maybe\n",
            3,
            "on_error: 'maybe' is not one of allow, review, block",
        ),
        (
            "on_error:\n  default: review\n  tenant_mismatch: allow\n",
            3,
            "on_error.tenant_mismatch: tenant_mismatch is a security error and can never "
            "map to allow",
        ),
        (
            "on_error:\n  default: review\n  malformed_event: block\n",
            3,
            "on_error.malformed_event: malformed_event never reaches a verdict (the message goes "
            "to the dead-letter topic): on_error cannot decide it",
        ),
        (
            "categories:\n  O1:\n    should_not:\n      - fine\n      - 3\n",
            5,
            "categories.O1.should_not.1: must be a string, not the number 3 (quote it to make it "
            "a string)",
        ),
        (
            "categories:\n  O5:\n    block_at: 0.2\n    review_at: 0.5\n",
            4,
            "categories.O5.review_at: review_at 0.5 must not be above block_at 0.2",
        ),
        ("schema: 2\n", 1, "schema: must be 1, not the number 2"),
        (
            "surfaces:\n  Bad Name: {}\n",
            2,
            "surfaces.Bad Name: invalid surface name 'Bad Name': use 1 to 64 lower-case letters, "
            "digits, '_', '.' and '-', starting with a letter or digit",
        ),
        (
            "allowed:\n  buckets: uploads\n",
            2,
            "allowed.buckets: must be a list of strings, not the string 'uploads' (write each "
            "item on its own line, starting with '- ')",
        ),
    ],
)
def test_validation_errors_name_the_line_and_field(text: str, line: int, reason: str) -> None:
    err = error(text)
    assert (err.line, err.reason) == (line, reason)
    assert str(err) == f"{P}:{line}: {reason}"


def test_the_earliest_error_is_reported_with_a_count_of_the_others() -> None:
    err = error("owner: 3\ncategories:\n  O1: {mode: odd}\n  O2: {action: odd}\n")
    first = "owner: must be a string, not the number 3 (quote it to make it a string)"
    assert (err.line, err.reason) == (1, first)
    assert str(err) == f"{P}:1: {first} (and 2 more problems)"
    assert err.problems() == [
        f"{P}:1: {first}",
        f"{P}:3: categories.O1.mode: 'odd' is not one of default, allowed, sensitive",
        f"{P}:4: categories.O2.action: 'odd' is not one of allow, review, block",
    ]
    copy = pickle.loads(pickle.dumps(err))  # noqa: S301 - our own object
    assert copy.problems() == err.problems()
    assert str(error("owner: 3\nschema: 2\n")).endswith(" (and 1 more problem)")


def test_an_unknown_category_is_reported_with_the_other_categories_problems() -> None:
    err = error(
        "categories:\n  O2:\n    action: reveiw\n    block_at: 1.5\n"
        "  Sexual Content:\n    mode: allowed\n"
    )
    assert err.problems() == [
        f"{P}:3: categories.O2.action: 'reveiw' is not one of allow, review, block; "
        "did you mean 'review'?",
        f"{P}:4: categories.O2.block_at: must be from 0 to 1, not the number 1.5",
        f"{P}:5: categories.Sexual Content: unknown category 'Sexual Content': write its code, O3",
    ]


RULE = "use 1 to 64 lower-case letters, digits, '_', '.' and '-', starting with a letter or digit"


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("Comments", "; did you mean 'comments'?"),
        ("Profile.Photo-2", "; did you mean 'profile.photo-2'?"),
        ("Profile Photo", ""),  # lower case is still not a surface name
        ("_comments", ""),
    ],
)
def test_a_bad_surface_name_says_the_rule_and_suggests_its_lower_case(name: str, hint: str) -> None:
    err = error(f"surfaces:\n  news: {{}}\n  {name}: {{}}\n")
    assert (err.line, err.reason) == (
        3,
        f"surfaces.{name}: invalid surface name {name!r}: {RULE}{hint}",
    )


def test_the_lower_case_surface_is_not_suggested_when_it_is_declared_already() -> None:
    err = error("surfaces:\n  comments: {}\n  Comments: {}\n")
    assert err.reason == f"surfaces.Comments: invalid surface name 'Comments': {RULE}"


def test_a_category_indented_under_surfaces_is_named_with_its_body_problems() -> None:
    """The body's unknown keys alone do not say why: the name is reported too, first."""
    err = error("surfaces:\n  O6: {action: review, blok_at: 0.9}\n")
    keys = "the keys here are categories, none_applying, on_error"
    assert err.problems() == [
        f"{P}:2: surfaces.O6: invalid surface name 'O6': {RULE}; O6 is a category: did you "
        "mean categories.O6?",
        f"{P}:2: surfaces.O6.action: unknown key 'action'; {keys}",
        f"{P}:2: surfaces.O6.blok_at: unknown key 'blok_at'; {keys}",
    ]


def test_none_applying_indented_under_surfaces_is_named() -> None:
    err = error("surfaces:\n  NA:\n    action: review\n")
    assert err.problems()[0] == (
        f"{P}:2: surfaces.NA: invalid surface name 'NA': {RULE}; NA is none applying: did you "
        "mean none_applying?"
    )


def test_every_bad_surface_name_is_reported_with_the_bodies_problems() -> None:
    err = error("surfaces:\n  Comments: {}\n  Bad Name:\n    categories: {O1: {mode: x}}\n")
    assert err.problems() == [
        f"{P}:2: surfaces.Comments: invalid surface name 'Comments': {RULE}; did you mean "
        "'comments'?",
        f"{P}:3: surfaces.Bad Name: invalid surface name 'Bad Name': {RULE}",
        f"{P}:4: surfaces.Bad Name.categories.O1.mode: 'x' is not one of default, allowed, "
        "sensitive",
    ]


def test_reversed_thresholds_name_both_values() -> None:
    err = error("none_applying:\n  block_at: 0.3\n  review_at: 0.6\n")
    assert (err.line, err.reason) == (
        3,
        "none_applying.review_at: review_at 0.6 must not be above block_at 0.3",
    )


def test_a_duplicate_key_is_reported_with_the_files_other_problems() -> None:
    err = error(
        "owner: a\ncategories:\n  O2: {action: review}\n  O2:\n    action: reveiw\n"
        "  O10: {}\nowner: b\n"
    )
    assert err.problems() == [
        f"{P}:4: duplicate key 'O2' (first at line 3)",
        f"{P}:5: categories.O2.action: 'reveiw' is not one of allow, review, block; "
        "did you mean 'review'?",  # the value in force is the last one, at its own line
        f"{P}:6: categories.O10: unknown category 'O10': use O1..O9 (NA is none_applying)",
        f"{P}:7: duplicate key 'owner' (first at line 1)",
    ]
    assert str(err).endswith(" (and 3 more problems)")


def test_a_file_whose_only_problem_is_a_duplicate_key_still_fails() -> None:
    err = error("owner: a\nowner: b\nowner: c\n")
    assert err.problems() == [
        f"{P}:2: duplicate key 'owner' (first at line 1)",
        f"{P}:3: duplicate key 'owner' (first at line 1)",
    ]


def test_duplicates_found_before_a_refusal_are_reported_with_it() -> None:
    err = error("owner: a\nowner: b\nx: !!binary aGk=\n")
    assert err.problems() == [
        f"{P}:2: duplicate key 'owner' (first at line 1)",
        f"{P}:3: unsupported YAML tag !!binary",
    ]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (
            "dsa:\n  categories: {}\n  categories: {}\n",
            3,
            "duplicate key 'categories' (first at line 2)",
        ),
        ("owner: a\nowner: b\n", 2, "duplicate key 'owner' (first at line 1)"),
        ("x: &a [1, 2]\ny: *a\n", 2, "aliases (*name) are not allowed"),
        ("<<: {owner: a}\n", 1, "merge keys (<<) are not supported"),
        ("on: review\n", 1, "key 'on' is not read as a string: quote it"),
        ("categories:\n  1: {}\n", 2, "key '1' is not read as a string"),
        ("? [a, b]\n: c\n", 1, "mapping keys must be plain strings"),
        ("owner: !!python/object:os.system {}\n", 1, "unsupported YAML tag !!python/object"),
        ("owner: !!binary aGk=\n", 1, "unsupported YAML tag !!binary"),
        ("owner: !custom x\n", 1, "unsupported YAML tag '!custom'"),
        ("categories: !!omap [{O1: {}}]\n", 1, "unsupported YAML tag !!omap"),
        ("owner: 2024-02-30\n", 1, "invalid value '2024-02-30'"),
        ("owner: " + "9" * 5000 + "\n", 1, "invalid value"),
        ("owner: a\ncategories: [\n", 3, "invalid YAML"),
        ("owner: a\n  bad indent: b\n", 2, "invalid YAML"),
        ("a: 1\n---\nb: 2\n", 2, "expected a single document"),
        ("owner: a\nx: \x00\n", 2, "invalid YAML"),
        ("- a\n- b\n", 1, "the top level must be a mapping of policy keys"),
        ("# comment\n\njust text\n", 1, "the top level must be a mapping of policy keys"),
    ],
)
def test_yaml_level_refusals(text: str, line: int, fragment: str) -> None:
    err = error(text)
    assert err.line == line
    assert fragment in err.reason


def test_anchors_without_aliases_are_harmless() -> None:
    assert load_text("owner: &who team\n", P).owner == "team"


def test_billion_laughs_is_refused_at_the_first_alias() -> None:
    text = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    assert error(text).reason == "aliases (*name) are not allowed"


def test_nesting_is_capped() -> None:
    assert error("a: " + "[" * (MAX_DEPTH + 5)).reason == f"nested deeper than {MAX_DEPTH} levels"
    deep = "a: " + "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2) + "\n"
    assert "unknown key" in error(deep).reason  # parsed; only the schema objects


def test_size_is_capped(tmp_path: Path) -> None:
    big = "# " + "x" * MAX_BYTES + "\n"
    assert error(big).line is None and "larger than" in error(big).reason
    path = tmp_path / "big.yaml"
    path.write_text(big, encoding="utf-8")
    with pytest.raises(PolicyError, match="larger than"):
        load_file(path)


def test_load_file(tmp_path: Path) -> None:
    good = tmp_path / "acme.yaml"
    good.write_text("owner: team\n", encoding="utf-8")
    assert load_file(good).owner == "team"
    missing = tmp_path / "missing.yaml"
    with pytest.raises(PolicyError) as info:
        load_file(missing)
    assert info.value.path == missing and info.value.line is None
    assert info.value.reason.startswith("cannot read")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"owner: a\ndescription: caf\xe9\n")
    with pytest.raises(PolicyError) as info:
        load_file(latin)
    assert (info.value.line, info.value.reason) == (2, "not valid UTF-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text("owner: a\ncategories:\n  O9: {mode: maybe}\n", encoding="utf-8")
    with pytest.raises(PolicyError, match=r"bad\.yaml:3: categories\.O9\.mode: 'maybe' is not"):
        load_file(bad)


# --- property tests: nothing but PolicyError, always with a reason and a sane line -----------

_LINE_BREAKS = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def _check(text: str) -> None:
    try:
        load_text(text, P)
    except PolicyError as err:
        assert err.reason and err.path == P
        if err.line is not None:
            assert 1 <= err.line <= len(_LINE_BREAKS.findall(text)) + 1


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["default", "allowed", "sensitive", "block", "review", "allow", "O1", "NA"]),
)
_keys = st.one_of(
    st.sampled_from(
        [
            "categories",
            "O1",
            "O4",
            "O9",
            "O10",
            "mode",
            "action",
            "block_at",
            "review_at",
            "should_not",
            "can",
            "allowed_text",
            "sensitive_text",
            "none_applying",
            "surfaces",
            "profile_photo",
            "allowed",
            "buckets",
            "prefixes",
            "on_error",
            "default",
            "tenant_mismatch",
            "dsa",
            "extends",
            "schema",
            "owner",
            "description",
        ]
    ),
    st.text(max_size=8),
)
_documents = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=5)
    ),
    max_leaves=30,
)


@pytest.mark.fuzz
@fuzz_settings(150)
@given(st.text(max_size=300))
def test_random_text_only_ever_raises_policy_error(text: str) -> None:
    _check(text)


@pytest.mark.fuzz
@fuzz_settings(150)
@given(_documents, st.sampled_from(["block", "flow"]))
def test_random_documents_only_ever_raise_policy_error(doc: Any, style: str) -> None:
    _check(yaml.safe_dump(doc, default_flow_style=style == "flow", allow_unicode=True))


_policyish = st.fixed_dictionaries(
    {},
    optional={
        "categories": st.dictionaries(
            st.sampled_from([*CODES, "NA", "O0"]),
            st.dictionaries(
                st.sampled_from(["mode", "action", "block_at", "review_at", "should_not", "can"]),
                _scalars | st.lists(_scalars, max_size=3),
                max_size=4,
            ),
            max_size=4,
        ),
        "on_error": _scalars
        | st.dictionaries(
            st.sampled_from(["default", "tenant_mismatch", "engine_error", "nope"]),
            _scalars,
            max_size=3,
        ),
        "allowed": st.dictionaries(
            st.sampled_from(["buckets", "prefixes"]), _scalars | st.lists(_scalars), max_size=2
        ),
        "extends": _scalars,
    },
)


@pytest.mark.fuzz
@fuzz_settings(150)
@given(_policyish)
def test_policy_shaped_documents_fail_only_with_located_errors(doc: dict[str, Any]) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True)
    try:
        load_text(text, P)
    except PolicyError as err:
        assert err.reason
        assert err.line is not None  # the document parsed: every error has a line
        assert 1 <= err.line <= text.count("\n") + 1


@pytest.mark.fuzz
@fuzz_settings(150)
@given(st.data())
def test_mutated_valid_files_only_ever_raise_policy_error(data: st.DataObject) -> None:
    text = default_yaml()
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 5))
        insert = data.draw(
            st.sampled_from(["", ":", "-", " ", "\n", "[", "{", "&a", "*a", "'", "!"])
        )
        text = text[:at] + insert + text[at + cut :]
    _check(text)
