"""Where an explained decision-table row was set (`moderator.explain.origin`), and the
`tenant_mismatch` message that names what the tenant may read (`moderator.policy.locations`)."""

from __future__ import annotations

import dataclasses
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from moderator.audit.read.api_models import VerdictExplanation
from moderator.cli.explain import with_origin
from moderator.explain.model import Explanation
from moderator.explain.origin import attach_origin, row_origin
from moderator.explain.render import explanation_json, steps
from moderator.policy.check import DirectoryCheck, check
from moderator.policy.compiled import compile_policy
from moderator.policy.locations import outside_tenant
from moderator.policy.registry import PolicyRegistry
from moderator.policy.resolve import resolve
from moderator.settings import TenancySettings
from tests.policy_fixtures import KEY_PREFIX, directory
from tests.test_explain import audit_record, demo, explain, unsafe


def demo_check() -> DirectoryCheck:
    with as_file(files("moderator") / "data" / "demo-policies") as found:
        return check(Path(found), TenancySettings())


def on_surface(surface: str, category: str = "O2") -> Explanation:
    """A museum verdict for an Unsafe `category`, decided on `surface`."""
    policy = demo("museum", surface if surface in ("comments", "exhibition") else "default")
    record = audit_record("m-1", policy, assessment=unsafe(category))
    e: Explanation = explain(record)
    return dataclasses.replace(e, input=dataclasses.replace(e.input, surface=surface))


def attached(e: Explanation) -> Explanation:
    result = demo_check()
    names = {stem: path.name for stem, path in result.paths.items()}
    return attach_origin(e, result.files, names, result.policies)


def step(e: Explanation, name: str) -> str | None:
    return dict(steps(e)).get(name)


# -- item: a row set by a surface override -------------------------------------------------


def test_the_policy_line_names_the_mode_as_a_mode() -> None:
    e = on_surface("comments")
    assert step(e, "policy") == (
        f"{demo('museum', 'comments').version}: row O2 (mode default): no score thresholds; "
        "Unsafe -> block"
    )


def test_a_surface_override_says_which_surface_and_file_changed_the_row() -> None:
    e = attached(on_surface("comments"))
    origin = e.policy.row_origin
    assert origin is not None and origin.surface == "comments"
    assert origin.set_by == {"mode": "default.yaml", "action": "surfaces.comments in museum.yaml"}
    assert origin.overrides == {"action": ("review", "block")}
    assert step(e, "origin") == (
        "O2 mode by default.yaml, action by surfaces.comments in museum.yaml; "
        "surface comments overrides O2: changed action review -> block"
    )
    assert explanation_json(e)["policy"]["row_origin"] == {
        "surface": "comments",
        "set_by": {"mode": "default.yaml", "action": "surfaces.comments in museum.yaml"},
        "overrides": {"action": {"from": "review", "to": "block"}},
        "undeclared_surface": None,
    }


def test_a_row_without_a_surface_override_names_its_files_and_an_undeclared_surface() -> None:
    e = attached(on_surface("post"))
    origin = e.policy.row_origin
    assert origin is not None and origin.surface is None
    assert origin.undeclared_surface == "post"
    assert step(e, "origin") == (
        "O2 mode by default.yaml, action by museum.yaml; "
        "surface post is not declared: the default rules apply"
    )
    assert explanation_json(e)["policy"]["row_origin"]["undeclared_surface"] == "post"


def test_files_that_no_longer_compile_to_the_version_give_no_origin() -> None:
    e = on_surface("comments")
    changed = dataclasses.replace(e, policy=dataclasses.replace(e.policy, version="0" * 16))
    assert attached(changed) == changed
    assert step(changed, "origin") is None
    assert "row_origin" not in explanation_json(changed)["policy"]


def test_the_api_document_still_validates_without_an_origin() -> None:
    VerdictExplanation.model_validate(explanation_json(on_surface("comments")))


def test_explain_without_a_policy_directory_says_why_there_is_no_origin(tmp_path: Path) -> None:
    e = on_surface("comments")
    shown = with_origin(e, tmp_path / "missing", TenancySettings())
    assert shown.policy.row_origin is None
    assert shown == dataclasses.replace(
        e, policy=dataclasses.replace(e.policy, origin_not_shown=shown.policy.origin_not_shown)
    )
    assert step(shown, "origin") == (
        f"not shown: policies.dir: {tmp_path / 'missing'} is not a directory; "
        f"pass --policies DIR holding the policies of version {e.policy.version}"
    )


def test_explain_reads_the_policy_directory(tmp_path: Path) -> None:
    with as_file(files("moderator") / "data" / "demo-policies") as found:
        e = with_origin(on_surface("comments"), Path(found), TenancySettings())
    assert e.policy.row_origin is not None and e.policy.row_origin.surface == "comments"


def test_a_tenant_without_a_file_names_the_default_policy(tmp_path: Path) -> None:
    # Decided as the service decides it under policies.default_for_unknown.
    with as_file(files("moderator") / "data" / "demo-policies") as found:
        registry = PolicyRegistry(Path(found), TenancySettings(), default_for_unknown=True)
        policy = registry.resolve("newshop", "post")
        assert policy is not None
        record = audit_record("n-1", policy, assessment=unsafe("O2"))
        e = explain(record)
        e = dataclasses.replace(e, input=dataclasses.replace(e.input, surface="post"))
        assert e.tenant_id == "newshop"
        origin = with_origin(e, Path(found), TenancySettings()).policy.row_origin
    assert origin is not None and origin.surface is None
    assert set(origin.set_by.values()) == {"default.yaml"}


def test_a_mode_set_after_the_action_brings_its_own_action() -> None:
    files = directory(
        t="categories:\n  O5: {action: review}\nsurfaces:\n  kids:\n"
        "    categories:\n      O5: {mode: allowed}\n"
    )
    resolved = resolve(files, "t", "kids", KEY_PREFIX)
    assert resolved.category("O5").action == "allow"
    origin = row_origin(files, {}, resolved.chain, "kids", "O5")
    assert origin.surface == "kids"
    assert origin.set_by == {"mode": "surfaces.kids in t.yaml", "action": "surfaces.kids in t.yaml"}


def test_the_none_applying_row_has_no_mode() -> None:
    files = directory(t="none_applying: {review_at: 0.3}\n")
    origin = row_origin(files, {"t": "t.yaml"}, ("t", "default"), "post", "NA")
    assert origin == dataclasses.replace(origin, surface=None, set_by={"review_at": "t.yaml"})


# -- item: the tenant_mismatch message -----------------------------------------------------


class Located:
    def __init__(self, buckets: list[str], prefixes: list[str]) -> None:
        self.tenant_id = "acme"
        self._document: dict[str, Any] = {"buckets": buckets, "prefixes": prefixes}

    def document(self) -> dict[str, Any]:
        return self._document


def test_the_message_names_the_tenant_and_what_it_may_read() -> None:
    policy = compile_policy(resolve(directory(), "acme", "default", KEY_PREFIX))
    assert not policy.allows_object("uploads", "top.jpg")
    assert outside_tenant(policy, "uploads", "top.jpg") == (
        "s3://uploads/top.jpg is outside tenant acme "
        "(allowed: s3://media/acme/, s3://uploads/acme/)"
    )


def test_a_tenant_with_whole_buckets_lists_them() -> None:
    text = outside_tenant(Located(["a-1"], []), "other", "x.png")
    assert text == "s3://other/x.png is outside tenant acme (allowed: s3://a-1/)"
    assert outside_tenant(Located([], []), "b", "k").endswith("(allowed: none)")


def test_an_unsafe_key_names_its_own_problem() -> None:
    text = outside_tenant(Located(["uploads"], ["acme/"]), "uploads", "acme/../kids/x.jpg")
    assert text == "s3://uploads/acme/../kids/x.jpg is refused for tenant acme: key contains '..'"


def test_the_message_stays_short_however_many_locations_and_however_long_the_key() -> None:
    many = Located([f"bucket-{n}-" + "b" * 50 for n in range(40)], ["p" * 200 + "/", "q/"])
    text = outside_tenant(many, "x" * 63, "k/" * 500 + "photo.jpg")
    assert len(text) <= 400
    assert "photo.jpg" in text and "and 77 more)" in text


# -- item: an error verdict's on_error action -----------------------------------------------


def test_the_file_or_override_that_set_an_on_error_action_is_found() -> None:
    from moderator.policy.resolve import on_error_source

    files = directory(
        t=("on_error: block\nsurfaces:\n  comments:\n    on_error: {object_not_found: allow}\n")
    )
    assert on_error_source(files, ("t", "default"), "default", "object_not_found") == ("t", False)
    assert on_error_source(files, ("t", "default"), "comments", "object_not_found") == (
        "t",
        True,
    )
    assert on_error_source(files, ("default",), "default", "corrupt_image") is None  # built-in


def test_an_error_verdict_names_the_file_that_set_its_on_error_action() -> None:
    policy = demo("museum")
    from moderator.errors import ErrorCode

    e = explain(audit_record("m-9", policy, error=ErrorCode.OBJECT_NOT_FOUND))
    shown = attached(e)
    origin = shown.policy.row_origin
    assert origin is not None and origin.set_by == {"on_error": "museum.yaml"}
    assert step(shown, "origin") == (
        "on_error for object_not_found by museum.yaml; "
        "surface post is not declared: the default rules apply"
    )
    unknown = explain(audit_record("u-1", policy, error=ErrorCode.UNKNOWN_TENANT))
    assert attached(unknown) == unknown  # decided by the default policy, for no chain
