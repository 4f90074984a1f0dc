"""`moderator dataset rationales` as a careful user meets it: rationales from a smoke-test model
are marked in the written dataset (never trained on unknowingly), the summary counts what
`--limit` left for later, the engine's loading is announced, and a bad OUT is named plainly.

The OpenAI-compatible test server answers every sample well; its `smoke_test` option decides
whether the engine reports a smoke-test model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from moderator.cli.dataset_rationales import SMOKE_TEST_KEY as CLI_SMOKE_TEST_KEY
from moderator.cli.main import main
from moderator.dev.openai.server import OpenAITestServer, ScriptedBackend
from moderator.training.dataset import SMOKE_TEST_KEY, read_dataset, smoke_test_rationales
from moderator.training.rationales import Journal, journal_path
from tests.policy_fixtures import clear_moderator_env
from tests.test_training_rationales import ALL_GOOD, make_dataset, run, scripted

FILLED = ["s0", "s1", "s2", "s3", "s5", "s6"]  # s4 has a person's rationale already


@pytest.fixture(autouse=True)
def _in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


def serve(*, smoke_test: bool) -> OpenAITestServer:
    backend = ScriptedBackend(respond=scripted(ALL_GOOD))
    return OpenAITestServer(backend, model="test-guard", smoke_test=smoke_test)


@pytest.fixture
def smoke_server() -> Iterator[OpenAITestServer]:
    with serve(smoke_test=True) as srv:
        yield srv


def out_file(tmp_path: Path) -> Path:
    return tmp_path / "out" / "train.jsonl"


def test_rationales_of_a_smoke_test_model_are_marked(
    tmp_path: Path, smoke_server: OpenAITestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dataset(tmp_path)
    (tmp_path / "out").mkdir()
    assert run(tmp_path, smoke_server) == 0
    out, err = capsys.readouterr()
    written = read_dataset(out_file(tmp_path))
    assert smoke_test_rationales(written) == FILLED
    assert {s.id: s.rationale_smoke_test for s in written}["s4"] is False  # a person wrote it
    entries = [json.loads(x) for x in out_file(tmp_path).read_text().splitlines()]
    assert [e["id"] for e in entries if e.get(SMOKE_TEST_KEY) is True] == FILLED
    journal = journal_path(out_file(tmp_path)).read_text().splitlines()
    assert all(json.loads(line)["smoke_test"] is True for line in journal)
    assert "  6 of them written by a smoke-test model, marked rationale_smoke_test: true" in out
    assert "(each is marked rationale_smoke_test: true)" in err
    assert CLI_SMOKE_TEST_KEY == SMOKE_TEST_KEY


def test_a_real_model_s_rationales_are_not_marked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dataset(tmp_path)
    (tmp_path / "out").mkdir()
    with serve(smoke_test=False) as server:
        assert run(tmp_path, server) == 0
    out, err = capsys.readouterr()
    written = read_dataset(out_file(tmp_path))
    assert all(s.rationale for s in written)
    assert smoke_test_rationales(written) == []
    assert SMOKE_TEST_KEY not in out_file(tmp_path).read_text()
    assert "smoke-test" not in out and "SMOKE-TEST" not in err


def test_a_later_real_rationale_clears_the_mark() -> None:
    journal = Journal()
    journal.record({"id": "a", "rationale": "stand-in", "smoke_test": True})
    journal.record({"id": "b", "rationale": "stand-in", "smoke_test": True})
    assert journal.smoke_test == {"a", "b"}
    journal.record({"id": "a", "rationale": "A person wrote this."})
    journal.record({"id": "b", "rejected": "too short (2 words)"})
    assert journal.smoke_test == set()


def test_the_loading_of_the_engine_is_announced(
    tmp_path: Path, smoke_server: OpenAITestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dataset(tmp_path)
    (tmp_path / "out").mkdir()
    assert run(tmp_path, smoke_server) == 0
    err = capsys.readouterr().err.splitlines()
    loading = (
        f"rationales: loading the openai engine (model test-guard at {smoke_server.url}), "
        "then one warm-up request"
    )
    assert err[0] == loading
    assert err[1].startswith("rationales: engine ready in ")
    assert err[1].endswith(" s (a SMOKE-TEST model: its answers mean nothing)")


def test_limit_leaves_the_rest_for_a_later_run_and_says_so(
    tmp_path: Path, smoke_server: OpenAITestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dataset(tmp_path)
    (tmp_path / "out").mkdir()
    assert run(tmp_path, smoke_server, "--limit", "2") == 0
    out = capsys.readouterr().out
    # Nothing was done earlier: the four not asked were left by --limit.
    assert "this run: 2 filled, 0 rejected, 0 failed; skipped (done earlier): 0" in out
    assert "  not asked (--limit): 4; run the command again for them" in out
    assert run(tmp_path, smoke_server) == 0
    out = capsys.readouterr().out
    assert "this run: 4 filled, 0 rejected, 0 failed; skipped (done earlier): 2" in out
    assert "not asked" not in out


def test_a_bad_out_is_named_plainly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = make_dataset(tmp_path)
    argv = ["dataset", "rationales", str(dataset)]
    assert main([*argv, str(tmp_path), "--engine", "fake"]) == 2
    assert capsys.readouterr().err == (
        f"moderator: dataset rationales: OUT {tmp_path} is a folder; give a file name\n"
    )
    assert main([*argv, str(tmp_path / "no" / "o.json"), "--engine", "fake"]) == 2
    assert capsys.readouterr().err == (
        f"moderator: dataset rationales: cannot write {tmp_path / 'no' / 'o.json'}: "
        f"the folder {tmp_path / 'no'} does not exist\n"
    )
