"""Tenants whose allowed locations overlap are named (moderator/policy/overlap.py): by `policy
validate` as a warning, and by the service's reload as a log line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from moderator.cli.main import main
from moderator.policy.check import check
from moderator.policy.overlap import overlaps
from moderator.policy.registry import PolicyRegistry
from moderator.settings import TenancySettings
from tests.policy_fixtures import clear_moderator_env

TENANCY = TenancySettings()
SHIPPED = Path(__file__).resolve().parent.parent / "policies"  # kids, museum, news, medical


def write_sample_policies(folder: Path) -> Path:
    return Path(shutil.copytree(SHIPPED, folder))


MUSEUM = 'allowed: {buckets: [uploads], prefixes: ["museum/"]}\n'


def found(directory: Path) -> list[str]:
    return overlaps(check(directory, TENANCY).policies)


def test_the_shipped_tenants_each_read_their_own_prefix(tmp_path: Path) -> None:
    assert found(write_sample_policies(tmp_path / "p")) == []


@pytest.mark.parametrize(
    ("allowed", "place"),
    [
        (MUSEUM, "s3://uploads/museum/"),
        ('allowed: {buckets: [uploads], prefixes: ["museum/old/"]}\n', "s3://uploads/museum/old/"),
    ],
)
def test_a_tenant_reaching_into_another_s_prefix_is_named(
    tmp_path: Path, allowed: str, place: str
) -> None:
    directory = write_sample_policies(tmp_path / "p")
    (directory / "kids.yaml").write_text(allowed)
    [line] = found(directory)
    assert line.startswith("tenants kids and museum may both read ") and place in line


def test_another_bucket_is_not_an_overlap(tmp_path: Path) -> None:
    directory = write_sample_policies(tmp_path / "p")
    (directory / "kids.yaml").write_text('allowed: {buckets: [other], prefixes: ["museum/"]}\n')
    assert found(directory) == []


def test_validate_warns_and_still_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clear_moderator_env(monkeypatch)
    directory = write_sample_policies(tmp_path / "p")
    (directory / "kids.yaml").write_text(MUSEUM)
    assert main(["policy", "validate", str(directory)]) == 0
    err = capsys.readouterr().err
    assert err == (
        "moderator: warning: tenants kids and museum may both read s3://uploads/museum/: "
        "either's events may name the other's uploads (their allowed locations overlap)\n"
    )


@pytest.mark.usefixtures("info_logs")
def test_a_reload_that_makes_an_overlap_logs_it_once(tmp_path: Path) -> None:
    directory = write_sample_policies(tmp_path / "p")
    registry = PolicyRegistry(directory, TENANCY)
    (directory / "kids.yaml").write_text(MUSEUM)
    with capture_logs() as logs:
        registry.reload()
        (directory / "kids.yaml").write_text(MUSEUM + "owner: t@example.org\n")
        registry.reload()
    lines = [line for line in logs if line["event"] == "policy_locations_overlap"]
    assert [line["log_level"] for line in lines] == ["warning"]
    assert "kids and museum" in lines[0]["detail"]
