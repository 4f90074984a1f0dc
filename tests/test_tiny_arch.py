"""`model make-tiny DIR --arch A` into a folder holding a tiny checkpoint of another arch is
refused in one line naming the folder and both archs: the old arch's files would stay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moderator.cli.main import main
from moderator.engine.smoke import MARKER


def test_another_archs_tiny_checkpoint_is_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("transformers", reason="make-tiny needs the transformers extra")
    target = tmp_path / "tiny"
    target.mkdir()
    marker = json.dumps({"smoke_test": True, "arch": "qwen2-vl", "seed": 0})
    (target / MARKER).write_text(marker, encoding="utf-8")
    (target / "config.json").write_text("{}", encoding="utf-8")
    assert main(["model", "make-tiny", str(target), "--arch", "llava-onevision"]) == 2
    assert capsys.readouterr().err == (
        f"moderator: {target} holds a qwen2-vl checkpoint, not llava-onevision; not overwriting "
        "it (use an empty directory for llava-onevision)\n"
    )
    assert sorted(p.name for p in target.iterdir()) == ["config.json", MARKER]
    assert (target / "config.json").read_text(encoding="utf-8") == "{}"
