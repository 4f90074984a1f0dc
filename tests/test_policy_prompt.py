"""The policy prompt renderer and the shipped policy files it renders from."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest
import yaml

from moderator.events.verdict import CATEGORIES, NONE_APPLYING
from moderator.policy.document import CODES, Mode, PolicyFile
from moderator.policy.model import ResolvedCategory, ResolvedNoneApplying, ResolvedPolicy
from moderator.policy.prompt import OPENING, render_prompt

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies"
DEMO_POLICIES = ROOT / "moderator" / "data" / "demo-policies"


def _load(path: Path) -> PolicyFile:
    return PolicyFile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def _default_policy() -> ResolvedPolicy:
    """default.yaml as a ResolvedPolicy (it extends nothing, so no merging is needed)."""
    doc = _load(POLICIES / "default.yaml")
    categories = []
    for code, name in zip(CODES, CATEGORIES, strict=False):
        c = doc.categories[code]
        assert c.mode and c.action and c.should_not and c.can
        assert c.allowed_text and c.sensitive_text
        categories.append(
            ResolvedCategory(
                code=code,
                name=name,
                mode=c.mode,
                action=c.action,
                block_at=c.block_at,
                review_at=c.review_at,
                should_not=c.should_not,
                can=c.can,
                allowed_text=c.allowed_text,
                sensitive_text=c.sensitive_text,
            )
        )
    assert doc.none_applying is not None and doc.none_applying.action is not None
    return ResolvedPolicy(
        tenant_id="default",
        surface="default",
        chain=("default",),
        categories=tuple(categories),
        none_applying=ResolvedNoneApplying(doc.none_applying.action, None, None),
        on_error={"default": "review"},
        buckets=("uploads",),
        prefixes=(),
        dsa_categories=doc.dsa.categories if doc.dsa else {},
        review_restricts_visibility=False,
        description=doc.description,
        owner=doc.owner,
    )


def _with_mode(policy: ResolvedPolicy, code: str, mode: Mode) -> ResolvedPolicy:
    categories = tuple(
        dataclasses.replace(c, mode=mode) if c.code == code else c for c in policy.categories
    )
    return dataclasses.replace(policy, categories=categories)


def _section(prompt: str, name: str) -> list[str]:
    """The lines of one category's text: after its heading, up to the blank line."""
    lines = prompt.split("\n")
    start = lines.index(f"{name}: ") + 1
    end = lines.index("", start)
    return lines[start:end]


def test_opening_sentence_then_headings_in_order() -> None:
    prompt = render_prompt(_default_policy())
    lines = prompt.split("\n")
    assert lines[0] == OPENING
    assert lines[1] == ""
    headings = [line for line in lines if line.startswith("O") and line.endswith(": ")]
    assert headings == [f"{name}: " for name in CATEGORIES[:-1]]
    assert lines[2] == "O1: Hate, Humiliation, Harassment: "


def test_each_category_is_followed_by_a_blank_line() -> None:
    lines = render_prompt(_default_policy()).split("\n")
    starts = [lines.index(f"{name}: ") for name in CATEGORIES[:-1]]
    for here, following in itertools.pairwise(starts):
        assert lines[following - 1] == ""
        assert "" not in lines[here : following - 1]
    assert lines[lines.index("", starts[-1]) + 1].startswith("Assessment steps:")


def test_default_mode_renders_the_bullet_lists() -> None:
    policy = _default_policy()
    prompt = render_prompt(policy)
    for category in policy.categories:
        body = _section(prompt, category.name)
        split = body.index("Can:")
        assert body[0] == "Should not:"
        assert body[1:split] == [f"- {b}" for b in category.should_not]
        assert body[split + 1 :] == [f"- {b}" for b in category.can]


def test_allowed_and_sensitive_switch_the_text() -> None:
    base = _default_policy()
    o4 = base.category("O4")

    allowed = render_prompt(_with_mode(base, "O4", "allowed"))
    assert _section(allowed, o4.name) == [o4.allowed_text]
    assert o4.sensitive_text not in allowed
    assert f"- {o4.should_not[0]}" not in allowed

    sensitive = render_prompt(_with_mode(base, "O4", "sensitive"))
    assert _section(sensitive, o4.name) == [o4.sensitive_text]
    assert o4.allowed_text not in sensitive

    # the other categories keep their guideline
    o3 = base.category("O3")
    assert _section(allowed, o3.name)[0] == "Should not:"
    assert _section(sensitive, o3.name) == _section(render_prompt(base), o3.name)


def test_texts_are_rendered_as_one_paragraph() -> None:
    base = _default_policy()
    categories = tuple(
        dataclasses.replace(c, mode="allowed", allowed_text="  Line one\nline two.\n")
        if c.code == "O2"
        else c
        for c in base.categories
    )
    prompt = render_prompt(dataclasses.replace(base, categories=categories))
    assert _section(prompt, CATEGORIES[1]) == ["Line one line two."]


def test_steps_and_template_list_every_category() -> None:
    prompt = render_prompt(_default_policy())
    tail = prompt[prompt.index("Assessment steps:") :]
    assert '"Unsafe"' in tail and '"Safe"' in tail and f'"{NONE_APPLYING}"' in tail
    template = tail[tail.index("{") :]
    assert template.endswith("}")
    assert template.index('"rating"') < template.index('"category"') < template.index('"rationale"')
    category_line = next(line for line in template.split("\n") if '"category"' in line)
    listed = category_line.split(":", 1)[1].strip().rstrip(",").split(" | ")
    assert [json.loads(value) for value in listed] == list(CATEGORIES)


def test_deterministic_and_sensitive_to_content() -> None:
    first = render_prompt(_default_policy())
    assert render_prompt(_default_policy()) == first
    base = _default_policy()
    o1 = base.category("O1")
    edited = dataclasses.replace(o1, can=(*o1.can, "Show a new example."))
    changed = dataclasses.replace(base, categories=(edited, *base.categories[1:]))
    assert render_prompt(changed) != first
    # metadata is not part of the prompt
    assert render_prompt(dataclasses.replace(base, description="x", owner="y")) == first


def test_categories_out_of_order_are_rejected() -> None:
    base = _default_policy()
    swapped = (base.categories[1], base.categories[0], *base.categories[2:])
    with pytest.raises(ValueError, match=r"O1\.\.O9"):
        render_prompt(dataclasses.replace(base, categories=swapped))


@pytest.mark.parametrize(
    "path",
    sorted(POLICIES.glob("*.yaml")) + sorted(DEMO_POLICIES.glob("*.yaml")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_shipped_policy_files_validate(path: Path) -> None:
    doc = _load(path)
    assert doc.description and doc.owner
    assert doc.extends == (None if path.stem == "default" else "default")


def test_default_policy_is_complete_and_bundled_for_the_demo() -> None:
    doc = _load(POLICIES / "default.yaml")
    assert set(doc.categories) == set(CODES)
    assert doc.dsa is not None and set(doc.dsa.categories) == {*CODES, "NA"}
    for category in doc.categories.values():
        assert category.should_not and 4 <= len(category.should_not) <= 8
        assert category.can and 3 <= len(category.can) <= 6
    bundled = (DEMO_POLICIES / "default.yaml").read_text(encoding="utf-8")
    assert bundled == (POLICIES / "default.yaml").read_text(encoding="utf-8")
