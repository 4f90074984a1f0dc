"""Golden files: `moderator policy render` of every shipped tenant and surface, byte for byte.

A change to a policy file, the prompt renderer or the decision table shows up here as a diff to
review. After a deliberate change: `pytest tests/test_policy_golden.py --regen-golden`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from moderator.cli.main import main
from moderator.policy.check import check_directory
from moderator.settings import TenancySettings
from tests.policy_fixtures import clear_moderator_env

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "policies"
# golden folder name -> policy directory, relative to the repository root
SOURCES = {"policies": "policies", "demo-policies": "moderator/data/demo-policies"}
TENANCY = TenancySettings(rule="key_prefix", upload_buckets=("uploads",))
REGEN = "pytest tests/test_policy_golden.py --regen-golden"


def _cases() -> list[tuple[str, str, str]]:
    """(golden folder, tenant, surface) for every compiled policy of the shipped directories."""
    cases = []
    for name, directory in SOURCES.items():
        policies, errors = check_directory(REPO / directory, TENANCY)
        assert not errors, errors
        cases += [(name, tenant, surface) for tenant, surface in sorted(policies)]
    return cases


CASES = _cases()


def _golden(name: str, tenant: str, surface: str) -> Path:
    return GOLDEN / name / f"{tenant}@{surface}.txt"


def _render(
    name: str, tenant: str, surface: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> str:
    config = tmp_path / "settings.yaml"
    config.write_text("tenancy:\n  rule: key_prefix\n  upload_buckets: [uploads]\n")
    args = ["policy", "render", tenant, "--surface", surface, "--policies", SOURCES[name]]
    assert main([*args, "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


@pytest.mark.parametrize(
    ("name", "tenant", "surface"), CASES, ids=[f"{n}/{t}@{s}" for n, t, s in CASES]
)
def test_render_matches_golden_file(
    name: str,
    tenant: str,
    surface: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(REPO)  # paths in the header are relative to the repository root
    rendered = _render(name, tenant, surface, tmp_path, capsys).encode("utf-8")
    path = _golden(name, tenant, surface)
    if request.config.getoption("--regen-golden"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rendered)
        return
    if not path.is_file():
        pytest.fail(f"missing golden file {path.relative_to(REPO)}: run `{REGEN}`")
    if path.read_bytes() != rendered:
        pytest.fail(
            f"`policy render {tenant} --surface {surface}` of {SOURCES[name]} differs from "
            f"{path.relative_to(REPO)}: review the change, then run `{REGEN}`"
        )


def test_no_stale_golden_files(request: pytest.FixtureRequest) -> None:
    expected = {_golden(*case) for case in CASES}
    stale = sorted(p for p in GOLDEN.glob("*/*.txt") if p not in expected)
    if request.config.getoption("--regen-golden"):
        for path in stale:
            path.unlink()
        return
    names = ", ".join(str(p.relative_to(REPO)) for p in stale)
    assert not stale, f"golden files without a policy: {names}; run `{REGEN}` to remove them"
