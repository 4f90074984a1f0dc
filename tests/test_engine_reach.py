"""Engine capabilities and the policy reach check: which categories a tenant's policy acts on
that an engine can never raise (moderator/engine/capabilities.py, moderator/policy/reach.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from moderator.engine.base import ALL_CODES, GUARD_MODEL, Capabilities, declared_capabilities
from moderator.engine.capabilities import capabilities
from moderator.engine.fake import FakeEngine
from moderator.engine.nudenet import EXPLICIT_LABELS, NUDITY_LABELS, Detection, assess
from moderator.errors import ConfigError
from moderator.events.verdict import category_code
from moderator.policy.model import ResolvedPolicy
from moderator.policy.reach import Shortfall, acted_on, format_codes, shortfall, shortfalls
from moderator.policy.resolve import resolve, surfaces
from moderator.settings import FakeEngineSettings
from tests.policy_fixtures import KEY_PREFIX, directory

GUARDS = ("transformers", "lmdeploy", "openai")
NOT_O3_O4 = ("O1", "O2", "O5", "O6", "O7", "O8", "O9")


def tenant(name: str = "acme", text: str = "") -> list[ResolvedPolicy]:
    """The tenant's policy for its default surface and every surface its chain declares."""
    files = directory(**{name: text})
    return [
        resolve(files, name, surface, KEY_PREFIX) for surface in ("default", *surfaces(files, name))
    ]


def allow_all_but(*codes: str) -> str:
    """A tenant file that allows every category except `codes` (which keep `block`)."""
    lines = ["categories:"]
    lines += [f"  {c}: {{action: allow}}" for c in ALL_CODES if c not in codes]
    return "\n".join(lines) + "\n"


# -- declarations ------------------------------------------------------------------------------


def test_nudenet_declares_o3_and_o4_and_no_policy_reading() -> None:
    assert capabilities("nudenet") == Capabilities(categories=("O3", "O4"), reads_policy=False)


@pytest.mark.parametrize("kind", GUARDS)
def test_guard_models_declare_the_whole_taxonomy_and_read_the_policy(kind: str) -> None:
    declared = capabilities(kind)
    assert declared == GUARD_MODEL
    assert declared.categories == ("O1", "O2", "O3", "O4", "O5", "O6", "O7", "O8", "O9")
    assert declared.reads_policy is True


def test_fake_declares_what_it_draws_and_fills_model_categories_from_it() -> None:
    engine = FakeEngine(FakeEngineSettings(unsafe_rate=1.0))
    assert capabilities("fake") == Capabilities(categories=ALL_CODES, reads_policy=False)
    assert declared_capabilities(engine) == capabilities("fake")
    assert engine.info.categories == capabilities("fake").categories
    drawn = {
        category_code(engine.assess(Image.new("RGB", (8, 8), (i, 3 * i % 256, 7))).category)
        for i in range(200)
    }
    assert drawn <= set(capabilities("fake").categories) and len(drawn) > 1


def test_nudenet_can_only_answer_what_it_declares() -> None:
    """Every rule of its mapping lands in a declared category (or NA)."""
    answered = set()
    for label in sorted(EXPLICIT_LABELS | NUDITY_LABELS | {"FACE_FEMALE", "FEET_EXPOSED"}):
        for score in (0.3, 0.65, 0.95):
            found = assess(
                [Detection(label, score, (0, 0, 1, 1))], block_threshold=0.6, explicit_threshold=0.7
            )
            answered.add(category_code(found.category))
    assert answered == {"O3", "O4", "NA"}
    assert set(capabilities("nudenet").categories) == answered - {"NA"}


def test_capabilities_need_no_extra_and_load_nothing() -> None:
    """Read from the classes alone: with torch, onnxruntime, lmdeploy and httpx unimportable."""
    code = (
        "import sys\n"
        "for name in ('torch', 'onnxruntime', 'lmdeploy', 'httpx', 'transformers', 'numpy'):\n"
        "    sys.modules[name] = None\n"
        "from moderator.engine.capabilities import capabilities\n"
        "for kind in ('nudenet', 'transformers', 'lmdeploy', 'openai', 'fake'):\n"
        "    declared = capabilities(kind)\n"
        "    print(kind, ','.join(declared.categories), declared.reads_policy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "nudenet O3,O4 False",
        *(f"{kind} {','.join(ALL_CODES)} True" for kind in GUARDS),
        f"fake {','.join(ALL_CODES)} False",
    ]


def test_an_unknown_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"engine\.kind=tesseract is not a known engine"):
        capabilities("tesseract")


def test_a_declaration_names_category_codes_only() -> None:
    with pytest.raises(ValueError, match="not category codes: NA, o4"):
        Capabilities(categories=("O3", "NA", "o4"), reads_policy=False)


def test_an_engine_without_a_declaration_has_none() -> None:
    class Undeclared:
        capabilities = ("O3",)  # not a Capabilities

    assert declared_capabilities(Undeclared()) is None
    assert declared_capabilities(object()) is None


# -- what a policy acts on ---------------------------------------------------------------------


def test_the_default_policy_acts_on_every_category() -> None:
    assert acted_on(tenant()) == ALL_CODES


def test_allow_without_thresholds_is_not_acting() -> None:
    assert acted_on(tenant(text=allow_all_but("O2"))) == ("O2",)


@pytest.mark.parametrize(
    "rule",
    ["{action: allow, review_at: 0.5}", "{action: allow, block_at: 0.9}", "{action: review}"],
)
def test_a_threshold_or_a_review_action_is_acting(rule: str) -> None:
    text = allow_all_but() + f"  O6: {rule}\n"
    text = text.replace("  O6: {action: allow}\n", "", 1)
    assert acted_on(tenant(text=text)) == ("O6",)


def test_an_allowed_mode_category_with_review_is_acting() -> None:
    text = allow_all_but().replace("  O4: {action: allow}", "  O4: {mode: allowed, action: review}")
    assert acted_on(tenant(text=text)) == ("O4",)


def test_a_surface_counts_for_its_tenant() -> None:
    text = allow_all_but() + "surfaces:\n  avatar:\n    categories:\n      O6: {action: review}\n"
    assert acted_on(tenant(text=text)[:1]) == ()
    assert acted_on(tenant(text=text)) == ("O6",)


# -- per engine --------------------------------------------------------------------------------


def test_nudenet_can_never_raise_most_of_the_default_policy() -> None:
    gap = shortfall("acme", "nudenet", tenant(), capabilities("nudenet"))
    assert gap == Shortfall("acme", "nudenet", NOT_O3_O4, ("O3", "O4"), False)
    assert gap.message() == (
        "engine nudenet can never raise O1, O2, O5-O9 that policy acme acts on (it judges O3, "
        "O4 only and does not read the policy text); those categories are never reviewed or "
        "blocked"
    )


def test_nudenet_with_a_nudity_only_policy_has_no_shortfall() -> None:
    assert (
        shortfall(
            "acme", "nudenet", tenant(text=allow_all_but("O3", "O4")), capabilities("nudenet")
        )
        is None
    )


def test_nudenet_names_only_what_the_policy_acts_on() -> None:
    gap = shortfall(
        "acme", "nudenet", tenant(text=allow_all_but("O4", "O6")), capabilities("nudenet")
    )
    assert gap is not None and gap.categories == ("O6",)


@pytest.mark.parametrize("kind", [*GUARDS, "fake"])
def test_engines_judging_every_category_have_no_shortfall(kind: str) -> None:
    assert shortfall("acme", kind, tenant(), capabilities(kind)) is None


def test_shortfalls_are_one_per_tenant_by_name() -> None:
    files = directory(
        zeta="surfaces:\n  a: {categories: {O1: {action: review}}}\n  b: {}\n",
        acme=allow_all_but("O3"),
        kids="",
    )
    policies = [
        resolve(files, name, surface, KEY_PREFIX)
        for name in ("zeta", "acme", "kids", "default")
        for surface in ("default", *surfaces(files, name))
    ]
    found = shortfalls(policies, "nudenet", capabilities("nudenet"))
    assert [g.tenant for g in found] == ["default", "kids", "zeta"]  # acme acts on O3 only


def test_a_subset_engine_that_reads_the_policy_says_only_what_it_judges() -> None:
    reader = Capabilities(categories=("O1",), reads_policy=True)
    gap = shortfall("acme", "x", tenant(text=allow_all_but("O1", "O2")), reader)
    assert gap is not None
    assert gap.message() == (
        "engine x can never raise O2 that policy acme acts on (it judges O1 only); those "
        "categories are never reviewed or blocked"
    )


@pytest.mark.parametrize(
    ("codes", "text"),
    [
        (NOT_O3_O4, "O1, O2, O5-O9"),
        (ALL_CODES, "O1-O9"),
        (("O3",), "O3"),
        (("O9", "O1", "O3"), "O1, O3, O9"),
        (("O2", "O3", "O4", "O6", "O7"), "O2-O4, O6, O7"),
        ((), ""),
    ],
)
def test_format_codes(codes: tuple[str, ...], text: str) -> None:
    assert format_codes(codes) == text
