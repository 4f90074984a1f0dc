"""The engine-reach warning where users meet it: `policy validate --engine`, `scan`, and the
pipeline `run` and `demo` build (one `engine_cannot_raise` log event per tenant)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image
from structlog.testing import capture_logs

from moderator.cli.main import main
from moderator.engine.base import GUARD_MODEL, Capabilities, EngineRequest, EngineResult
from moderator.engine.fake import FakeEngine
from moderator.engine.nudenet import NudenetEngine
from moderator.events.verdict import ModelInfo
from moderator.fetch.store import InMemoryObjectStore
from moderator.service import build_pipeline
from tests.harness import settings_for
from tests.policy_fixtures import clear_moderator_env, default_yaml

NOT_O3_O4 = ["O1", "O2", "O5", "O6", "O7", "O8", "O9"]
ONLY_NUDITY = "categories:\n" + "".join(
    f"  {code}: {{action: allow}}\n" for code in ("O1", "O2", "O5", "O6", "O7", "O8", "O9")
)


def warning(engine: str, tenant: str) -> str:
    return (
        f"moderator: warning: engine {engine} can never raise O1, O2, O5-O9 that policy {tenant} "
        "acts on (it judges O3, O4 only and does not read the policy text); those categories "
        "are never reviewed or blocked"
    )


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_moderator_env(monkeypatch)


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """default, acme (two surfaces) and shop, which acts on nudity only."""
    d = tmp_path / "policies"
    d.mkdir()
    (d / "default.yaml").write_text(default_yaml())
    (d / "acme.yaml").write_text(
        "surfaces:\n  avatar:\n    categories:\n      O6: {mode: sensitive}\n"
    )
    (d / "shop.yaml").write_text(ONLY_NUDITY)
    return d


# -- policy validate --engine ------------------------------------------------------------------


def validate(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main(["policy", "validate", *(str(a) for a in args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_validate_with_nudenet_warns_once_per_tenant(
    capsys: pytest.CaptureFixture[str], policies: Path
) -> None:
    code, out, err = validate(capsys, policies, "--engine", "nudenet")
    assert code == 0
    assert err.splitlines() == [warning("nudenet", "acme"), warning("nudenet", "default")]
    assert (code, out) == (0, validate(capsys, policies)[1])  # the table is the same


@pytest.mark.parametrize("engine", ["transformers", "lmdeploy", "openai", "fake", None])
def test_validate_with_an_engine_judging_everything_or_none_warns_nothing(
    capsys: pytest.CaptureFixture[str], policies: Path, engine: str | None
) -> None:
    code, out, err = validate(capsys, policies, *(["--engine", engine] if engine else []))
    assert (code, err) == (0, "")
    assert [line.split()[0] for line in out.splitlines()] == [
        "acme",
        "acme",
        "default",
        "shop",
    ]


def test_validate_of_an_invalid_directory_reports_problems_only(
    capsys: pytest.CaptureFixture[str], policies: Path
) -> None:
    (policies / "shop.yaml").write_text("categories:\n  O4: {block_at: 2}\n")
    code, out, err = validate(capsys, policies, "--engine", "nudenet")
    assert (code, out) == (2, "")
    assert "warning" not in err and "shop.yaml" in err


def test_validate_rejects_an_unknown_engine(
    capsys: pytest.CaptureFixture[str], policies: Path
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["policy", "validate", str(policies), "--engine", "tesseract"])
    assert exited.value.code == 2
    assert "invalid choice: 'tesseract'" in capsys.readouterr().err


# -- the pipeline run and demo build ---------------------------------------------------------


class EngineDouble:
    """Stands in for an engine with the declared `capabilities` of another: no model loaded."""

    capabilities: ClassVar[Capabilities] = GUARD_MODEL

    def __init__(self, name: str) -> None:
        categories = self.capabilities.categories
        self._info = ModelInfo(engine=name, name=f"{name}-double", categories=categories)

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def input_size(self) -> int:
        return 64

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        raise AssertionError("not called")

    def close(self) -> None:
        pass


class NudenetCapabilityDouble(EngineDouble):
    """An engine double declaring NudenetEngine's own capabilities (the extra is not needed)."""

    capabilities = NudenetEngine.capabilities


def built_events(policies: Path, engine: object | None) -> list[dict[str, object]]:
    settings = settings_for(policies)
    store = InMemoryObjectStore()
    with capture_logs() as logs:
        pipeline = build_pipeline(settings, store=store, engine=engine)  # type: ignore[arg-type]
    pipeline.close()
    return [e for e in logs if e["event"] == "engine_cannot_raise"]


def test_the_pipeline_logs_one_event_per_tenant_for_a_nudity_detector(policies: Path) -> None:
    events = built_events(policies, NudenetCapabilityDouble("nudenet"))
    assert [(e["tenant"], e["categories"], e["log_level"]) for e in events] == [
        ("acme", NOT_O3_O4, "warning"),
        ("default", NOT_O3_O4, "warning"),
    ]
    assert {e["engine"] for e in events} == {"nudenet"}
    assert events[0]["judged"] == ["O3", "O4"]
    assert f"moderator: warning: {events[0]['detail']}" == warning("nudenet", "acme")


@pytest.mark.parametrize(
    "engine", [EngineDouble("transformers"), None], ids=["guard-double", "fake-from-settings"]
)
def test_the_pipeline_logs_nothing_for_an_engine_judging_everything(
    policies: Path, engine: object | None
) -> None:
    assert built_events(policies, engine) == []


# -- scan ----------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 24), (60 * i, 20, 200)).save(root / f"{i}.png")
    return root


def scan(
    capsys: pytest.CaptureFixture[str], folder: Path, policies: Path, *args: str
) -> tuple[int, str]:
    out = folder.parent / "verdicts.jsonl"
    argv = ["scan", str(folder), "--policies", str(policies), "--output", str(out), *args]
    code = main(argv)
    return code, capsys.readouterr().err


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("moderator: warning:")]


def test_scan_warns_once_about_the_scanned_tenant(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    folder: Path,
    policies: Path,
) -> None:
    """The fake engine declaring the nudity detector's capabilities: no extra needed."""
    monkeypatch.setattr(FakeEngine, "capabilities", NudenetEngine.capabilities)
    code, err = scan(capsys, folder, policies, "--engine", "fake", "--tenant", "acme")
    assert code == 0
    assert warnings_in(err) == [warning("fake", "acme")]
    code, err = scan(capsys, folder, policies, "--engine", "fake", "--tenant", "shop")
    assert (code, warnings_in(err)) == (0, [])  # shop acts on O3 and O4 only
    code, err = scan(capsys, folder, policies, "--engine", "fake", "--tenant", "nofile")
    assert (code, warnings_in(err)) == (0, [warning("fake", "nofile")])  # the default policy


def test_scan_with_an_engine_judging_everything_warns_nothing(
    capsys: pytest.CaptureFixture[str], folder: Path, policies: Path
) -> None:
    code, err = scan(capsys, folder, policies, "--engine", "fake", "--tenant", "acme")
    assert (code, warnings_in(err)) == (0, [])
    assert "scan: done 3/3" in err


@pytest.mark.nudenet
def test_scan_with_nudenet_warns(
    capsys: pytest.CaptureFixture[str], folder: Path, policies: Path
) -> None:
    if any(importlib.util.find_spec(name) is None for name in ("nudenet", "onnxruntime")):
        reason = "the nudenet extra is not installed: pip install 'moderator[nudenet]'"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI installs it)", pytrace=False)
        pytest.skip(reason)
    code, err = scan(capsys, folder, policies, "--engine", "nudenet", "--tenant", "acme")
    assert code == 0
    assert warnings_in(err) == [warning("nudenet", "acme")]
