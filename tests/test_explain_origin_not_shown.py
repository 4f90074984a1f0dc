"""`moderator explain` says why it shows no row origin, and `--policies DIR` points it at the
policy files that decided: an origin dropped without a word reads as a row no file set."""

from __future__ import annotations

import dataclasses
import json
import shutil
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import pytest

from moderator.audit.db.store import AuditStore
from moderator.audit.models import IncomingRecord
from moderator.audit.read.api_models import VerdictExplanation
from moderator.audit.read.row_origin import with_origin
from moderator.cli.main import main
from moderator.explain.render import explanation_json, steps
from moderator.settings import TenancySettings
from tests.policy_fixtures import clear_moderator_env
from tests.test_explain import audit_record, demo, unsafe
from tests.test_explain_origin import on_surface

KIDS_ORIGIN = (
    "O6 mode and action and block_at and review_at by kidsplace.yaml; "
    "surface post is not declared: the default rules apply"
)


@pytest.fixture
def decided(tmp_path: Path) -> Path:
    """A copy of the bundled demo policies, which decided the stored verdict."""
    with as_file(files("moderator") / "data" / "demo-policies") as found:
        return Path(shutil.copytree(found, tmp_path / "decided"))


@pytest.fixture
def changed(decided: Path, tmp_path: Path) -> Path:
    """The same files after a change to kidsplace: another version."""
    directory = Path(shutil.copytree(decided, tmp_path / "changed"))
    path = directory / "kidsplace.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("review_at: 0.2}", "review_at: 0.25}"), encoding="utf-8")
    return directory


@pytest.fixture
def config(tmp_path: Path, changed: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An audit store holding one kidsplace verdict, with policies.dir at `changed`."""
    clear_moderator_env(monkeypatch)
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    record = audit_record("k-1", demo("kidsplace"), assessment=unsafe("O6", 0.252))
    with AuditStore.open(url) as store:
        store.insert([IncomingRecord("moderation.audit", 0, 0, record)])
    path = tmp_path / "settings.yaml"
    settings = {"audit": {"url": url}, "policies": {"dir": str(changed)}}
    path.write_text(json.dumps(settings), encoding="utf-8")
    return path


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["explain", "k-1", *args])
    out, err = capsys.readouterr()
    return code, out, err


def labelled(out: str) -> dict[str, str]:
    return {line[:9].strip(): line[11:] for line in out.splitlines()}


def test_text_says_why_the_origin_is_not_shown(
    config: Path, changed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = explain(capsys, "--config", str(config))
    assert code == 0, err
    version = demo("kidsplace").version
    origin = labelled(out)["origin"]
    assert origin.startswith(f"not shown: policies.dir ({changed}) compiles kidsplace/")
    assert origin.endswith(
        f", not the verdict's {version}; pass --policies DIR holding the policies of version "
        f"{version}"
    )


def test_json_says_why_in_missing_and_still_validates(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = explain(capsys, "--config", str(config), "--format", "json")
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    assert "row_origin" not in doc["policy"]  # the schema is unchanged: no new key
    (reason,) = doc["missing"]
    assert reason.startswith("row origin: policies.dir (") and "pass --policies DIR" in reason
    (step,) = [s for s in doc["steps"] if s["step"] == "origin"]
    assert step["text"] == "not shown: " + reason.removeprefix("row origin: ")
    VerdictExplanation.model_validate(doc)


def test_policies_points_at_the_files_that_decided(
    config: Path, decided: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = explain(capsys, "--config", str(config), "--policies", str(decided))
    assert code == 0, err
    assert labelled(out)["origin"] == KIDS_ORIGIN
    code, out, err = explain(
        capsys, "--config", str(config), "--policies", str(decided), "--format", "json"
    )
    doc = json.loads(out)
    assert doc["missing"] == [] and doc["policy"]["row_origin"]["set_by"]["mode"] == (
        "kidsplace.yaml"
    )


def test_a_policies_path_that_is_not_a_directory_is_one_line(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    code, out, err = explain(capsys, "--config", str(config), "--policies", str(missing))
    assert (code, out) == (2, "")
    assert err == f"moderator: policies.dir: {missing} is not a directory\n"


def test_help_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    out = capsys.readouterr().out
    assert "--policies DIR" in out and "moderator explain a-1 --policies" in out


def test_a_directory_that_cannot_be_read_names_its_problem(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    directory.mkdir()  # no default.yaml: unusable as a whole
    e = on_surface("comments")
    note = with_origin(e, directory, TenancySettings()).policy.origin_not_shown
    assert note == (
        f"{directory}: no default.yaml (every policy directory needs one); "
        f"pass --policies DIR holding the policies of version {e.policy.version}"
    )


def test_a_verdict_without_a_row_says_nothing_about_an_origin(tmp_path: Path) -> None:
    e = on_surface("comments")
    bare = dataclasses.replace(e, policy=dataclasses.replace(e.policy, row=None))
    assert with_origin(bare, tmp_path / "missing", TenancySettings()) == bare
    assert "origin" not in dict(steps(bare))
    assert explanation_json(bare)["missing"] == list(bare.missing)


def test_without_a_policy_directory_a_demo_verdict_gets_its_origin_from_the_demo_policies(
    config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = json.loads(config.read_text(encoding="utf-8"))
    del settings["policies"]  # the default, policies/, which the demo's directory lacks
    config.write_text(json.dumps(settings), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code, out, err = explain(capsys, "--config", str(config))
    assert code == 0, err
    assert labelled(out)["origin"] == KIDS_ORIGIN
    with AuditStore.open(settings["audit"]["url"]) as store:  # a verdict the demo did not make
        other = audit_record("k-2", demo("kidsplace"), assessment=unsafe("O6", 0.252))
        other["verdict"]["policy"]["version"] = "00000000000000aa"
        store.insert([IncomingRecord("moderation.audit", 0, 1, other)])
    assert main(["explain", "k-2", "--config", str(config)]) == 0
    assert labelled(capsys.readouterr().out)["origin"] == (
        "not shown: policies.dir: policies is not a directory, and the bundled demo policies, "
        "tried instead, did not decide it; pass --policies DIR holding the policies of version "
        "00000000000000aa"
    )
    (tmp_path / "policies").mkdir()  # a directory there is read, as it stands
    code, out, err = explain(capsys, "--config", str(config))
    assert code == 0, err
    assert labelled(out)["origin"].startswith("not shown: policies: no default.yaml")


@pytest.mark.parametrize(
    ("name", "added", "problem"),
    [
        # its own file: was compiled as a tenant without one, a version no service ran
        ("kidsplace.yaml", "categories:\n  O1: {action: x}\n", "duplicate key 'categories'"),
        ("default.yaml", "on_error: block\n", "duplicate key 'on_error'"),  # one it extends
    ],
)
def test_a_file_of_the_tenants_chain_that_does_not_load_is_named(
    config: Path,
    changed: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    added: str,
    problem: str,
) -> None:
    path = changed / name
    path.write_text(path.read_text(encoding="utf-8") + added)
    code, out, err = explain(capsys, "--config", str(config))
    assert code == 0, err
    origin = labelled(out)["origin"]
    assert origin.startswith(
        f"not shown: policies.dir ({changed}) has a file that does not load: {name}:"
    ), origin
    assert problem in origin
