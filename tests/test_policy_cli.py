"""`moderator policy validate|render|diff`: output formats and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moderator.cli.main import main
from moderator.policy.check import check
from moderator.settings import TenancySettings
from tests.policy_fixtures import clear_moderator_env, default_yaml

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "policies"
DEMO = REPO / "moderator" / "data" / "demo-policies"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_moderator_env(monkeypatch)


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main(["policy", *(str(a) for a in args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def policy_dir(path: Path, **tenants: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "default.yaml").write_text(default_yaml())
    for name, text in tenants.items():
        (path / f"{name}.yaml").write_text(text)
    return path


# -- validate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", [SHIPPED, DEMO], ids=["policies", "demo-policies"])
def test_validate_shipped_directories(capsys: pytest.CaptureFixture[str], directory: Path) -> None:
    code, out, err = run(capsys, "validate", directory)
    assert (code, err) == (0, "")
    rows = [line.split() for line in out.splitlines()]
    expected = check(directory, TenancySettings()).policies
    assert {(t, s): v for t, s, v in rows} == {k: p.version for k, p in expected.items()}
    assert rows[0][:2] == (["default", "default"] if directory == SHIPPED else ["acme", "default"])
    lines = out.splitlines()
    assert len({line.index(row[2]) for line, row in zip(lines, rows, strict=True)}) == 1  # aligned


def test_validate_defaults_to_policies_dir_from_the_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    directory = policy_dir(tmp_path / "p", shop="{}")
    config = tmp_path / "settings.yaml"
    config.write_text(f"policies:\n  dir: {directory}\n")
    code, out, _ = run(capsys, "validate", "--config", config)
    assert code == 0
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["default", "default"],
        ["shop", "default"],
    ]


def test_validate_reports_every_problem(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    d = policy_dir(
        tmp_path / "p",
        bad="description: fine\nowner: x\ncategories:\n  O1: {mode: [\n",
        typo="extends: default\ncategories:\n  O2:\n    action: block\n    colour: red\n",
        a="schema: 1\nextends: b\n",
        b="# b extends a\n\nextends: a\n",
        orphan="description: lost\nextends: nothere\n",
        child="extends: bad\n",  # blocked by bad.yaml: not reported again
        sec="on_error:\n  default: review\n  tenant_mismatch: allow\n",
        good="categories:\n  O2: {action: review}\n",
    )
    code, out, err = run(capsys, "validate", d)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"{d}/bad.yaml:5: invalid YAML: while parsing a flow node, expected the node content, "
        "but found '<stream end>'",
        f"{d}/sec.yaml:3: on_error.tenant_mismatch: tenant_mismatch is a security error and "
        "can never map to allow",
        f"{d}/typo.yaml:5: categories.O2.colour: unknown key 'colour'; the keys here are "
        "action, allowed_text, block_at, can, mode, review_at, sensitive_text, should_not",
        f"{d}/b.yaml:3: extends: inheritance cycle a -> b -> a",
        f"{d}/a.yaml:2: extends: inheritance cycle b -> a -> b",
        f"{d}/orphan.yaml:2: extends: unknown base policy 'nothere' (no nothere.yaml)",
    ]


def test_validate_lists_every_problem_of_a_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = policy_dir(
        tmp_path / "p",
        shop="description: shop\ncategories:\n  O2:\n    action: reveiw\n    block_at: 1.5\n"
        "  Sexual Content:\n    mode: allowed\non_error:\n  tenant_mismatch: allow\n",
        unknown="foo: 1\nbar: 2\n",
    )
    code, out, err = run(capsys, "validate", d)
    assert (code, out) == (2, "")
    keys = (
        "the keys here are allowed, categories, description, dsa, extends, none_applying, "
        "on_error, owner, schema, surfaces"
    )
    assert err.splitlines() == [
        f"{d}/shop.yaml:4: categories.O2.action: 'reveiw' is not one of allow, review, block; "
        "did you mean 'review'?",
        f"{d}/shop.yaml:5: categories.O2.block_at: must be from 0 to 1, not the number 1.5",
        f"{d}/shop.yaml:6: categories.Sexual Content: unknown category 'Sexual Content': "
        "write its code, O3",
        f"{d}/shop.yaml:9: on_error.tenant_mismatch: tenant_mismatch is a security error and "
        "can never map to allow",
        f"{d}/unknown.yaml:1: foo: unknown key 'foo'; {keys}",
        f"{d}/unknown.yaml:2: bar: unknown key 'bar'; {keys}",
    ]


def test_scan_on_a_broken_directory_counts_the_problems_and_points_at_validate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = policy_dir(tmp_path / "p", shop="foo: 1\nbar: 2\n", other="owner: 3\n")
    code = main(["scan", str(tmp_path), "--engine", "fake", "--policies", str(d)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        f"moderator: {d}/other.yaml:1: owner: must be a string, not the number 3 (quote it to "
        f"make it a string) (and 2 more problems); run `moderator policy validate {d}` to see "
        "every problem"
    ]


def test_validate_merged_threshold_error_has_a_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = policy_dir(
        tmp_path / "p",
        base="description: b\ncategories:\n  O3: {review_at: 0.9}\n",
        shop="extends: base\ncategories:\n  O3: {block_at: 0.5}\n",
    )
    code, _, err = run(capsys, "validate", d)
    assert code == 2
    assert err == (
        f"{d}/shop.yaml:3: categories.O3: review_at 0.9 (base.yaml, top level) is above "
        "block_at 0.5 (shop.yaml, top level) once merged\n"
    )


def test_validate_a_surfaces_threshold_above_the_top_levels_names_the_surfaces_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = policy_dir(
        tmp_path / "p",
        edge=(
            "categories:\n"
            "  O4: {block_at: 0.5}\n"
            "surfaces:\n"
            "  chat:\n"
            "    categories:\n"
            "      O4: {review_at: 0.9}\n"
        ),
    )
    code, _, err = run(capsys, "validate", d)
    assert code == 2
    assert err == (
        f"{d}/edge.yaml:6: surfaces.chat.categories.O4: review_at 0.9 (edge.yaml, surfaces.chat) "
        "is above block_at 0.5 (edge.yaml, top level) once merged\n"
    )


def test_validate_unusable_directories(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "validate", tmp_path / "missing")
    assert (code, out) == (2, "")
    assert err == f"moderator: DIR: {tmp_path / 'missing'} is not a directory\n"
    (tmp_path / "shop.yaml").write_text("{}")
    code, _, err = run(capsys, "validate", tmp_path)
    assert code == 2
    assert err == f"moderator: {tmp_path}: no default.yaml (every policy directory needs one)\n"


def test_validate_goes_on_past_a_duplicate_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = policy_dir(
        tmp_path / "p",
        shop="categories:\n  O2: {action: review}\n  O2: {action: block}\n  O10: {}\n",
    )
    code, out, err = run(capsys, "validate", d)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"{d}/shop.yaml:3: duplicate key 'O2' (first at line 2)",
        f"{d}/shop.yaml:4: categories.O10: unknown category 'O10': use O1..O9 "
        "(NA is none_applying)",
    ]


# -- validate FILE -----------------------------------------------------------------------------


def test_validate_a_file_checks_its_tenant_in_its_own_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = policy_dir(
        tmp_path / "p",
        base="categories:\n  O2: {action: review}\n",
        shop="extends: base\nsurfaces:\n  avatar: {}\n",
        other="foo: 1\n",  # another tenant's problem: not the file's to fix
    )
    code, out, err = run(capsys, "validate", d / "shop.yaml")
    assert (code, err) == (0, "")
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["shop", "default"],
        ["shop", "avatar"],
    ]


def test_validate_a_file_reports_the_problems_of_its_chain_only(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = policy_dir(tmp_path / "p", base="owner: 3\n", shop="extends: base\n", other="foo: 1\n")
    code, out, err = run(capsys, "validate", d / "shop.yaml")
    assert (code, out) == (2, "")  # the broken base is why shop cannot compile
    assert err == (
        f"{d}/base.yaml:1: owner: must be a string, not the number 3 (quote it to make it a "
        "string)\n"
    )
    (d / "shop.yaml").write_text("categories:\n  O3: {block_at: 0.3, review_at: 0.6}\n")
    code, out, err = run(capsys, "validate", d / "shop.yaml")
    assert (code, out) == (2, "")
    assert err == (
        f"{d}/shop.yaml:2: categories.O3.review_at: review_at 0.6 must not be above block_at 0.3\n"
    )


def test_validate_a_new_file_against_the_policy_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = policy_dir(tmp_path / "p", shop="extends: defualt\n", other="foo: 1\n")
    new = tmp_path / "new" / "shop.yaml"
    new.parent.mkdir()
    new.write_text("categories:\n  O2: {action: review}\n")
    code, out, err = run(capsys, "validate", new, "--policies", d)
    assert (code, err) == (0, "")  # the new file replaces the directory's shop.yaml
    assert [line.split()[:2] for line in out.splitlines()] == [["shop", "default"]]
    new.write_text("extends: defualt\n")
    code, out, err = run(capsys, "validate", new, "--policies", d)
    assert (code, out) == (2, "")
    assert err == (
        f"{new}:1: extends: unknown base policy 'defualt' (no defualt.yaml); "
        "did you mean 'default'?\n"
    )
    code, out, err = run(capsys, "validate", new)
    assert (code, out) == (2, "")
    assert err == (
        f"moderator: {new}: its directory has no default.yaml to check it against; add "
        "--policies DIR to check it against the policy directory it is meant for\n"
    )


def test_validate_a_file_that_is_no_policy_file_names_its_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("")
    code, out, err = run(capsys, "validate", notes)
    assert (code, out) == (2, "")
    assert err == (
        f"moderator: DIR: {notes} is neither a directory nor a policy file (*.yaml, *.yml); to "
        f"check every file of its directory: moderator policy validate {tmp_path}\n"
    )


# -- render ------------------------------------------------------------------------------------


def test_render_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "render", "kids", "--surface", "profile_photo", "--policies", SHIPPED
    )
    assert (code, err) == (0, "")
    policy = check(SHIPPED, TenancySettings()).policies[("kids", "profile_photo")]
    lines = out.splitlines()
    assert lines[:6] == [
        "tenant         kids",
        "surface        profile_photo",
        f"version        {policy.version}",
        f"full hash      {policy.full_hash}",
        f"prompt sha256  {policy.prompt_sha256}",
        f"chain          {SHIPPED / 'kids.yaml'} -> {SHIPPED / 'default.yaml'}",
    ]
    start = "--- prompt (exactly as sent to the model) ---\n"
    assert f"{start}{policy.prompt}\n--- end of prompt ---\n" in out
    table = lines[lines.index("--- decision table ---") + 1 :]
    assert table[0].split() == ["category", "mode", "on", "Unsafe", "block_at", "review_at", "rule"]
    assert table[1].startswith("O1: Hate, Humiliation, Harassment  ")
    assert table[1].split("  ")[-1].startswith("score >= 0.3 -> block")
    assert table[10].startswith("NA: None applying (and unknown categories)  -  ")
    assert "tenant_mismatch     block" in lines
    assert lines[-2:] == ["buckets   uploads", "prefixes  kids/"]


def test_render_surface_without_override(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "render", "kids", "--surface", "banner", "--policies", SHIPPED)
    assert code == 0
    policy = check(SHIPPED, TenancySettings()).policies[("kids", "default")]
    assert out.splitlines()[1:3] == [
        "surface        default (requested 'banner': no override declared for it; declared: "
        "profile_photo)",
        f"version        {policy.version}",
    ]


def test_render_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "render", "acme", "--surface", "avatar", "--policies", DEMO, "--format", "json"
    )
    assert code == 0
    doc = json.loads(out)
    policy = check(DEMO, TenancySettings()).policies[("acme", "avatar")]
    assert doc["tenant"] == "acme" and doc["surface"] == doc["requested_surface"] == "avatar"
    assert doc["version"] == policy.version and doc["full_hash"] == policy.full_hash
    assert doc["prompt"] == policy.prompt
    assert doc["policy"] == json.loads(json.dumps(policy.resolved.to_json()))
    assert doc["decision_table"]["categories"]["O6"]["mode"] == "sensitive"
    assert doc["decision_table"]["none_applying"]["action"] == "block"
    assert doc["chain"] == [str(DEMO / "acme.yaml"), str(DEMO / "default.yaml")]
    assert doc["default_for_unknown"] is False


def test_render_unknown_tenant(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "render", "nobody", "--policies", SHIPPED)
    assert (code, out) == (2, "")
    assert err == f"moderator: no policy file for tenant nobody in {SHIPPED}\n"
    config = tmp_path / "settings.yaml"
    config.write_text("policies:\n  default_for_unknown: true\n")
    code, out, _ = run(capsys, "render", "nobody", "--policies", SHIPPED, "--config", config)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "tenant         nobody"
    assert lines[5] == f"chain          (no file) -> {SHIPPED / 'default.yaml'}"
    assert "note           tenant nobody has no policy file: the default policy applies" in out
    assert lines[lines.index("--- allowed locations ---") + 2] == "prefixes  nobody/"


def test_render_a_broken_tenant_lists_the_problems(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = policy_dir(tmp_path / "p", shop="colour: red\n", other="categories:\n  O2: {x: 1}\n")
    code, out, err = run(capsys, "render", "shop", "--policies", d)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"{d}/other.yaml:2: categories.O2.x: unknown key 'x'; the keys here are action, "
        "allowed_text, block_at, can, mode, review_at, sensitive_text, should_not",
        f"{d}/shop.yaml:1: colour: unknown key 'colour'; the keys here are allowed, categories, "
        "description, dsa, extends, none_applying, on_error, owner, schema, surfaces",
    ]
    code, out, err = run(capsys, "render", "default", "--policies", d)
    assert code == 0 and out.startswith("tenant         default\n")
    assert err == (
        f"moderator: warning: 2 problems elsewhere in {d}; "
        f"run `moderator policy validate {d}` to see them\n"
    )


# -- diff --------------------------------------------------------------------------------------


def test_diff(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    old = policy_dir(
        tmp_path / "old",
        shop="categories:\n  O2: {action: review, block_at: 0.9}\non_error: review\n",
        calm="description: same\n",
        gone="{}",
    )
    new = policy_dir(
        tmp_path / "new",
        shop=(
            "categories:\n  O2: {mode: sensitive, action: review, block_at: 0.8}\n"
            "on_error: {default: review, object_not_found: allow}\n"
            "surfaces:\n  avatar:\n    none_applying: {action: block}\n"
        ),
        calm="description: edited, which changes no decision\n",
        fresh="{}",
    )
    versions = {
        side: {k: p.version for k, p in check(d, TenancySettings()).policies.items()}
        for side, d in (("old", old), ("new", new))
    }
    code, out, err = run(capsys, "diff", old, new)
    assert (code, err) == (0, "")
    o, n = versions["old"], versions["new"]
    assert out.splitlines() == [
        f"calm: unchanged (version {o[('calm', 'default')]})",
        f"default: unchanged (version {o[('default', 'default')]})",
        "fresh: added",
        f"  default: added (version {n[('fresh', 'default')]})",
        "gone: removed",
        f"  default: removed (was version {o[('gone', 'default')]})",
        "shop: changed",
        f"  default: version {o[('shop', 'default')]} -> {n[('shop', 'default')]}",
        "    O2 mode: default -> sensitive",
        "    O2 block_at: 0.9 -> 0.8",
        "    on_error.object_not_found: review -> allow",
        "    prompt changed: yes",
        f"  avatar: surface added, version {o[('shop', 'default')]} -> {n[('shop', 'avatar')]} "
        "(it had the default surface's rules)",
        "    O2 mode: default -> sensitive",
        "    O2 block_at: 0.9 -> 0.8",
        "    NA action: review -> block",
        "    on_error.object_not_found: review -> allow",
        "    prompt changed: yes",
        "5 tenant(s): 1 changed, 1 added, 1 removed, 2 unchanged",
    ]


def test_diff_with_an_invalid_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = policy_dir(tmp_path / "good")
    bad = policy_dir(tmp_path / "bad", shop="extends: nothere\n")
    code, out, err = run(capsys, "diff", good, bad)
    assert (code, out) == (2, "")
    assert err == f"{bad}/shop.yaml:1: extends: unknown base policy 'nothere' (no nothere.yaml)\n"
    code, _, err = run(capsys, "diff", tmp_path / "none", good)
    assert code == 2 and err == f"moderator: OLD_DIR: {tmp_path / 'none'} is not a directory\n"
