"""Inheritance, surface overrides and locations: policy files → ResolvedPolicy."""

from __future__ import annotations

from pathlib import Path

import pytest

from moderator.events.verdict import CATEGORIES
from moderator.policy.document import CODES, PolicyFile
from moderator.policy.keys import BUCKET_NAME_RULE
from moderator.policy.load import PolicyError
from moderator.policy.resolve import chain_of, default_locations, resolve, surfaces
from moderator.settings import TenancySettings
from tests.policy_fixtures import BUCKET_MAP, KEY_PREFIX, default_yaml, directory, parse


def test_default_locations_follow_the_tenancy_rule() -> None:
    assert default_locations("acme", KEY_PREFIX) == (("media", "uploads"), ("acme/",))
    assert default_locations("acme", BUCKET_MAP) == (("acme-a", "acme-b"), ())
    assert default_locations("nobody", BUCKET_MAP) == ((), ())
    assert default_locations("acme", TenancySettings()) == (("uploads",), ("acme/",))


def test_chains() -> None:
    files = directory(
        kids="extends: family\n", family="owner: f\n", acme="extends: default\n", solo="{}"
    )
    assert chain_of(files, "kids") == ("kids", "family", "default")
    assert chain_of(files, "acme") == ("acme", "default")
    assert chain_of(files, "solo") == ("solo", "default")
    assert chain_of(files, "default") == ("default",)
    assert chain_of(files, "unknown") == ("default",)  # a tenant without a file


def test_unknown_base_names_the_file() -> None:
    files = directory(kids="extends: family\n")
    sources = {"kids": Path("/p/kids.yaml")}
    with pytest.raises(PolicyError) as info:
        chain_of(files, "kids", sources=sources)
    assert str(info.value) == (
        "/p/kids.yaml: extends: unknown base policy 'family' (no family.yaml)"
    )
    with pytest.raises(PolicyError, match=r"^kids\.yaml: extends: unknown base"):
        resolve(files, "kids", "default", KEY_PREFIX)


@pytest.mark.parametrize(
    ("extends", "hint"),
    [
        ("defualt", "; did you mean 'default'?"),
        ("Family", "; did you mean 'family'?"),
        ("famly", "; did you mean 'family'?"),
        ("kid", ""),  # the file itself is no base: extending it would be a cycle
        ("nothere", ""),
    ],
)
def test_unknown_base_suggests_the_closest_policy(extends: str, hint: str) -> None:
    files = directory(kids=f"extends: {extends}\n", family="owner: f\n")
    with pytest.raises(PolicyError) as info:
        chain_of(files, "kids")
    assert info.value.reason == (
        f"extends: unknown base policy {extends!r} (no {extends}.yaml){hint}"
    )


def test_unknown_base_suggests_a_file_that_failed_to_load() -> None:
    files = directory(kids="extends: shpo\n")
    sources = {"kids": Path("/p/kids.yaml"), "shop": Path("/p/shop.yaml")}
    with pytest.raises(PolicyError, match=r"; did you mean 'shop'\?$"):
        chain_of(files, "kids", sources=sources)


def test_cycles_are_errors() -> None:
    files = directory(a="extends: b\n", b="extends: c\n", c="extends: a\n", d="extends: d\n")
    with pytest.raises(PolicyError) as info:
        chain_of(files, "a")
    assert info.value.path == Path("c.yaml")
    assert info.value.reason == "extends: inheritance cycle a -> b -> c -> a"
    with pytest.raises(PolicyError, match="inheritance cycle d -> d"):
        surfaces(files, "d")


def test_the_default_is_the_root() -> None:
    files = directory(default=default_yaml() + "extends: acme\n", acme="{}")
    with pytest.raises(PolicyError, match="default policy cannot extend another"):
        chain_of(files, "acme")
    with pytest.raises(PolicyError, match=r"^default\.yaml: no default\.yaml"):
        chain_of({"acme": PolicyFile()}, "acme")


def test_surfaces_along_the_chain_only() -> None:
    files = directory(
        kids="extends: family\nsurfaces: {profile_photo: {}, chat: {}}\n",
        family="surfaces: {banner: {}}\n",
        other="surfaces: {elsewhere: {}}\n",
    )
    assert surfaces(files, "kids") == ("banner", "chat", "profile_photo")
    assert surfaces(files, "other") == ("elsewhere",)
    assert surfaces(files, "unknown") == ()


def test_the_default_alone_resolves_completely() -> None:
    policy = resolve(directory(), "acme", "default", KEY_PREFIX)
    assert policy.tenant_id == "acme" and policy.chain == ("default",)
    assert policy.surface == "default"
    assert tuple(c.code for c in policy.categories) == CODES
    assert tuple(c.name for c in policy.categories) == CATEGORIES[:-1]
    o4 = policy.category("O4")
    assert (o4.mode, o4.action, o4.block_at, o4.review_at) == ("default", "block", None, None)
    assert o4.should_not == ("show O4 material",) and o4.can == ("discuss O4 in general",)
    assert o4.allowed_text.startswith("O4 content is fine")
    na = policy.none_applying
    assert (na.action, na.block_at, na.review_at) == ("review", None, None)
    assert policy.on_error == {"default": "review"}
    assert (policy.buckets, policy.prefixes) == (("media", "uploads"), ("acme/",))
    assert (policy.description, policy.owner) == ("test default", "tests")
    assert policy.dsa_categories == {} and not policy.review_restricts_visibility


def test_categories_merge_field_by_field() -> None:
    files = directory(
        family="categories:\n  O3: {action: review, block_at: 0.9, review_at: 0.5}\n"
        "  O1: {should_not: [family rule one, family rule two]}\n",
        kids="extends: family\ncategories:\n  O3: {mode: sensitive, review_at: 0.3}\n"
        "  O1: {can: [kids may]}\n",
    )
    policy = resolve(files, "kids", "default", KEY_PREFIX)
    o3 = policy.category("O3")
    # the mode changed in kids without an action: the sensitive mode's own action applies
    assert (o3.mode, o3.action, o3.block_at, o3.review_at) == ("sensitive", "block", 0.9, 0.3)
    assert o3.should_not == ("show O3 material",)  # texts still from the default
    o1 = policy.category("O1")
    assert o1.should_not == ("family rule one", "family rule two")  # replaced wholesale
    assert o1.can == ("kids may",)
    assert policy.chain == ("kids", "family", "default")


def test_an_explicit_null_clears_an_inherited_threshold() -> None:
    files = directory(
        family="categories: {O2: {block_at: 0.8, review_at: 0.4}}\n",
        kids="extends: family\ncategories: {O2: {block_at: null}}\n",
    )
    o2 = resolve(files, "kids", "default", KEY_PREFIX).category("O2")
    assert (o2.block_at, o2.review_at) == (None, 0.4)


@pytest.mark.parametrize(
    ("tenant", "mode", "action"),
    [
        ("categories: {O4: {mode: allowed}}\n", "allowed", "allow"),
        ("categories: {O4: {mode: sensitive}}\n", "sensitive", "block"),
        ("categories: {O4: {mode: default}}\n", "default", "block"),
        ("categories: {O4: {mode: allowed, action: review}}\n", "allowed", "review"),
        ("categories: {O4: {action: allow}}\n", "default", "allow"),
    ],
)
def test_the_action_defaults_from_the_merged_mode(tenant: str, mode: str, action: str) -> None:
    o4 = resolve(directory(acme=tenant), "acme", "default", KEY_PREFIX).category("O4")
    assert (o4.mode, o4.action) == (mode, action)


def test_a_mode_change_resets_an_inherited_action() -> None:
    files = directory(
        family="categories: {O4: {action: block}, O2: {action: review}}\n",
        museum="extends: family\ncategories: {O4: {mode: allowed}, O2: {mode: sensitive}}\n",
        gallery="extends: family\ncategories: {O4: {mode: allowed, action: review}}\n",
        later="extends: museum\ncategories: {O4: {action: review}}\n",
    )
    museum = resolve(files, "museum", "default", KEY_PREFIX)
    assert (museum.category("O4").mode, museum.category("O4").action) == ("allowed", "allow")
    assert museum.category("O2").action == "block"
    gallery = resolve(files, "gallery", "default", KEY_PREFIX).category("O4")
    assert (gallery.mode, gallery.action) == ("allowed", "review")  # named in the same file
    later = resolve(files, "later", "default", KEY_PREFIX).category("O4")
    assert (later.mode, later.action) == ("allowed", "review")  # named after the mode change


def test_surface_overrides_apply_base_first_and_after_the_top_level() -> None:
    files = directory(
        default=default_yaml()
        + "surfaces:\n  profile_photo:\n    categories: {O4: {mode: sensitive, block_at: 0.5}}\n"
        "    none_applying: {review_at: 0.7}\n",
        museum="categories: {O4: {mode: allowed}, O3: {mode: allowed}}\n"
        "surfaces:\n  profile_photo:\n    categories: {O4: {block_at: 0.6}}\n"
        "    on_error: block\n",
    )
    photo = resolve(files, "museum", "profile_photo", KEY_PREFIX)
    assert photo.surface == "profile_photo"
    o4 = photo.category("O4")
    assert (o4.mode, o4.action, o4.block_at) == ("sensitive", "block", 0.6)
    assert photo.category("O3").mode == "allowed"
    assert photo.none_applying.review_at == 0.7
    assert photo.on_error == {"default": "block"}
    plain = resolve(files, "museum", "default", KEY_PREFIX)
    assert plain.surface == "default" and plain.category("O4").mode == "allowed"
    assert plain.on_error == {"default": "review"}
    other = resolve(files, "museum", "chat", KEY_PREFIX)
    assert other.surface == "default"  # not declared anywhere: no override
    assert other == plain


def test_a_surface_declared_only_in_the_base_is_labelled() -> None:
    files = directory(default=default_yaml() + "surfaces: {chat: {}}\n", acme="owner: acme team\n")
    policy = resolve(files, "acme", "chat", KEY_PREFIX)
    assert policy.surface == "chat" and policy.owner == "acme team"


def test_none_applying_merges() -> None:
    files = directory(
        family="none_applying: {action: block, block_at: 0.95}\n",
        kids="extends: family\nnone_applying: {review_at: 0.5}\n",
    )
    na = resolve(files, "kids", "default", KEY_PREFIX).none_applying
    assert (na.action, na.block_at, na.review_at) == ("block", 0.95, 0.5)


def test_on_error_merges_key_by_key() -> None:
    files = directory(
        family="on_error: {engine_timeout: block, default: block}\n",
        kids="extends: family\non_error: review\n",
        strict="extends: family\non_error: {object_not_found: allow}\n",
    )
    assert resolve(files, "kids", "default", KEY_PREFIX).on_error == {
        "default": "review",
        "engine_timeout": "block",
    }
    assert resolve(files, "strict", "default", KEY_PREFIX).on_error == {
        "object_not_found": "allow",
        "default": "block",
        "engine_timeout": "block",
    }


def test_an_allowing_default_must_name_every_security_error() -> None:
    text = "on_error: {default: allow, tenant_mismatch: block, unknown_tenant: review, "
    text += "decompression_bomb: review, decode_timeout: block, corrupt_image: review, "
    files = directory(acme=text + "unsupported_format: review, object_too_large: block}\n")
    assert resolve(files, "acme", "default", KEY_PREFIX).on_error["default"] == "allow"


@pytest.mark.parametrize(
    "on_error",
    [
        {"tenant_mismatch": "allow"},
        {"default": "allow"},
        {"default": "allow", "tenant_mismatch": "review", "unknown_tenant": "review"},
    ],
)
def test_security_errors_never_allow_after_merging(on_error: dict[str, str]) -> None:
    files = directory()
    files["acme"] = PolicyFile.model_construct(on_error=on_error)  # bypasses the schema check
    with pytest.raises(PolicyError, match="a security error can never map to allow"):
        resolve(files, "acme", "default", KEY_PREFIX, sources={"acme": Path("p/acme.yaml")})


def test_merged_thresholds_must_stay_ordered() -> None:
    files = directory(
        family="categories: {O6: {block_at: 0.6}}\n",
        kids="extends: family\ncategories: {O6: {review_at: 0.8}}\n",
    )
    with pytest.raises(PolicyError) as info:
        resolve(files, "kids", "default", KEY_PREFIX)
    assert info.value.path == Path("kids.yaml")
    assert info.value.reason == (
        "categories.O6: review_at 0.8 (kids.yaml, top level) is above block_at 0.6 "
        "(family.yaml, top level) once merged"
    )
    files = directory(
        kids="none_applying: {review_at: 0.9}\nsurfaces: {x: {none_applying: {block_at: 0.5}}}\n"
    )
    with pytest.raises(PolicyError) as info:
        resolve(files, "kids", "x", KEY_PREFIX)
    assert info.value.reason == (  # the surface set the later value: its key is named
        "surfaces.x.none_applying: review_at 0.9 (kids.yaml, top level) is above block_at 0.5 "
        "(kids.yaml, surfaces.x) once merged"
    )


def test_missing_texts_are_reported_against_the_default() -> None:
    files = directory(acme="categories: {O4: {mode: allowed}}\n")
    default = files["default"]
    without_o4 = {k: v for k, v in default.categories.items() if k != "O4"}
    files["default"] = default.model_copy(update={"categories": without_o4})
    with pytest.raises(PolicyError) as info:
        resolve(files, "acme", "default", KEY_PREFIX, sources={"default": Path("/p/default.yaml")})
    assert str(info.value) == (
        "/p/default.yaml: categories.O4: no should_not/can text (set it in default.yaml)"
    )
    for field in ("should_not", "can", "allowed_text", "sensitive_text"):
        o7 = default.categories["O7"].model_copy(update={field: None})
        files["default"] = default.model_copy(
            update={"categories": {**default.categories, "O7": o7}}
        )
        label = "should_not/can text" if field in ("should_not", "can") else field
        with pytest.raises(PolicyError) as info:
            resolve(files, "acme", "default", KEY_PREFIX)
        assert info.value.reason == f"categories.O7: no {label} (set it in default.yaml)"
    files = directory(acme="categories: {O2: {sensitive_text: '  '}}\n")
    with pytest.raises(PolicyError, match=r"categories\.O2: no sensitive_text \(set it"):
        resolve(files, "acme", "default", KEY_PREFIX)


def test_locations_override_the_rule_field_by_field() -> None:
    files = directory(
        family="allowed: {buckets: [shared, shared, archive]}\n",
        kids="extends: family\nallowed: {prefixes: [kids/a/, kids/]}\n",
        open="allowed: {prefixes: []}\n",
    )
    kids = resolve(files, "kids", "default", KEY_PREFIX)
    assert (kids.buckets, kids.prefixes) == (("archive", "shared"), ("kids/", "kids/a/"))
    family = resolve(files, "family", "default", KEY_PREFIX)
    assert (family.buckets, family.prefixes) == (("archive", "shared"), ("family/",))
    assert resolve(files, "open", "default", KEY_PREFIX).prefixes == ()
    mapped = resolve(files, "acme", "default", BUCKET_MAP)
    assert (mapped.buckets, mapped.prefixes) == (("acme-a", "acme-b"), ())


@pytest.mark.parametrize(
    ("allowed", "reason"),
    [
        ("{prefixes: [../other/]}", "allowed.prefixes: '../other/': contains '..'"),
        ("{prefixes: [a..b/]}", "allowed.prefixes: 'a..b/': contains '..'"),
        ("{prefixes: [/abs/]}", "allowed.prefixes: '/abs/': absolute key"),
        ('{prefixes: ["a\\tb/"]}', "allowed.prefixes: 'a\\tb/': key contains control characters"),
        ("{prefixes: ['']}", "allowed.prefixes: '': empty prefix (use prefixes: [] for any key)"),
        # Keys are matched by their first characters: `gam` would reach tenant gamma's keys.
        (
            "{buckets: [uploads], prefixes: [gam/, gam]}",
            "allowed.prefixes: 'gam' must end with '/' (as written it also matches any key "
            "starting with 'gam', such as 'gam-other/...'); write 'gam/'",
        ),
        ("{buckets: ['']}", f"allowed.buckets: '' is not a bucket name: {BUCKET_NAME_RULE}"),
        # `*` has no meaning there: it would be a bucket named `*`, matching nothing.
        ("{buckets: ['*']}", f"allowed.buckets: '*' is not a bucket name: {BUCKET_NAME_RULE}"),
        (
            "{buckets: [Up/Loads]}",
            f"allowed.buckets: 'Up/Loads' is not a bucket name: {BUCKET_NAME_RULE}",
        ),
        ("{buckets: [a..b]}", f"allowed.buckets: 'a..b' is not a bucket name: {BUCKET_NAME_RULE}"),
        (
            "{buckets: [10.0.0.1]}",
            f"allowed.buckets: '10.0.0.1' is not a bucket name: {BUCKET_NAME_RULE}",
        ),
    ],
)
def test_unsafe_locations_are_refused(allowed: str, reason: str) -> None:
    files = directory(acme=f"allowed: {allowed}\n")
    with pytest.raises(PolicyError) as info:
        resolve(files, "acme", "default", KEY_PREFIX)
    assert (info.value.path, info.value.line, info.value.reason) == (
        Path("acme.yaml"),
        None,
        reason,
    )


@pytest.mark.parametrize("tenant", ["", "Acme", "a/b", "../x", "a b", "x" * 64])
def test_invalid_tenant_ids_are_refused(tenant: str) -> None:
    with pytest.raises(PolicyError, match="invalid tenant id"):
        resolve(directory(), tenant, "default", KEY_PREFIX)


OTHER = "STATEMENT_CATEGORY_OTHER_VIOLATION_TC"
MINORS = "STATEMENT_CATEGORY_PROTECTION_OF_MINORS"


def test_metadata_and_dsa_merge() -> None:
    files = directory(
        default=default_yaml() + f"dsa: {{categories: {{O3: {OTHER}, O4: {OTHER}}}}}\n",
        acme=f"description: acme policy\ndsa: {{categories: {{O4: {MINORS}}}, "
        "review_restricts_visibility: true}\n",
    )
    policy = resolve(files, "acme", "default", KEY_PREFIX)
    assert (policy.description, policy.owner) == ("acme policy", "tests")
    assert policy.dsa_categories == {"O3": OTHER, "O4": MINORS}
    assert policy.review_restricts_visibility


def test_resolution_is_deterministic_and_leaves_inputs_alone() -> None:
    files = directory(acme="categories: {O1: {mode: sensitive}}\n")
    before = {name: f.model_dump() for name, f in files.items()}
    first = resolve(files, "acme", "default", KEY_PREFIX)
    assert resolve(files, "acme", "default", KEY_PREFIX) == first
    assert first.to_json() == resolve(dict(files), "acme", "default", KEY_PREFIX).to_json()
    assert {name: f.model_dump() for name, f in files.items()} == before
    assert parse("owner: x\n").owner == "x"


@pytest.mark.parametrize("code", ["corrupt_image", "unsupported_format", "object_too_large"])
def test_failures_an_uploader_can_cause_can_never_allow(code: str) -> None:
    """A JPEG cut short (which viewers still show), a format the service does not read, or a
    file padded past the size limit: allowing any would let any picture through unchecked."""
    with pytest.raises(PolicyError, match=f"{code} is a security error and can never map to allow"):
        directory(acme=f"on_error: {{{code}: allow}}\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('owner: "\\u202eevil\\x1b[2J\\r\\nfake"\n', "owner: holds the control character \\u202e"),
        (
            'categories: {O1: {should_not: [fine, "cut\\x9bhere"]}}\n',
            "categories.O1.should_not[1]: holds the control character \\x9b",
        ),
        ('surfaces: {"a\\x1bb": {}}\n', "surfaces: a key holds the control character \\x1b"),
    ],
)
def test_policy_texts_hold_no_control_characters(text: str, message: str) -> None:
    """YAML's escapes (`"\\x1b"`) get past its own refusal of raw controls; a policy text
    reaches terminals (`policy render`) and the model's prompt as it is."""
    with pytest.raises(PolicyError) as caught:
        directory(acme=text)
    assert message in str(caught.value)


def test_line_breaks_and_tabs_in_a_policy_text_are_fine() -> None:
    files = directory(acme='description: "two\\n\\tlines"\n')
    assert files["acme"].description == "two\n\tlines"
