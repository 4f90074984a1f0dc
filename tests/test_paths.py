"""directory_problem and file_problem: whether a path can be the directory or the file a
command writes to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moderator.paths import directory_problem, file_problem


def test_a_directory_or_a_path_that_can_be_made_one_is_fine(tmp_path: Path) -> None:
    assert directory_problem(tmp_path) is None
    assert directory_problem(tmp_path / "new" / "deeper") is None


def test_a_file_in_the_way_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    assert directory_problem(blocker) == f"{blocker} exists and is not a directory"
    inner = blocker / "run" / "x"
    assert directory_problem(inner) == f"cannot create {inner}: {blocker} is not a directory"


def test_a_folder_that_cannot_be_written_to_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked)
    inner = locked / "run"
    assert directory_problem(inner) == f"cannot create {inner}: {locked} is not writable"
    assert directory_problem(locked) is None  # an existing directory is for its command to open


def test_a_file_to_write_needs_an_existing_writable_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert file_problem(tmp_path / "out.jsonl") is None
    (tmp_path / "old.jsonl").write_text("x")
    assert file_problem(tmp_path / "old.jsonl") is None  # replaced, as the export does
    assert file_problem(tmp_path) == f"{tmp_path} is a directory"
    missing = tmp_path / "nope" / "out.jsonl"
    assert file_problem(missing) == f"cannot create {missing}: {missing.parent} does not exist"
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    under = blocker / "out.jsonl"
    assert file_problem(under) == f"cannot create {under}: {blocker} is not a directory"
    monkeypatch.setattr(os, "access", lambda *_: False)  # root may write anywhere
    assert file_problem(tmp_path / "out.jsonl") == (
        f"cannot create {tmp_path / 'out.jsonl'}: {tmp_path} is not writable"
    )
