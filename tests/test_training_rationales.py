"""`moderator dataset rationales` (moderator/training/rationales.py): the checks that reject an
answer, the journal that makes a run resumable, and whole runs against the OpenAI-compatible
test server scripted per sample (each sample's prompt names its id)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from PIL import Image

from moderator.cli.dataset_rationales import MAX_REPEAT as CLI_MAX_REPEAT
from moderator.cli.main import main
from moderator.dev.openai.server import (
    CompletionParams,
    OpenAITestServer,
    RequestRejected,
    ScriptedBackend,
)
from moderator.engine.base import EngineResult
from moderator.errors import ConfigError, ErrorCode
from moderator.events.verdict import Assessment
from moderator.training.dataset import Sample, read_dataset, write_dataset
from moderator.training.rationales import (
    MAX_REPEAT,
    Rejected,
    accepted_rationale,
    journal_path,
    rationale_prompt,
    read_journal,
    reason_kind,
    rebase,
    repeated_ngram_ratio,
)
from tests.policy_fixtures import clear_moderator_env

O1 = "O1: Hate, Humiliation, Harassment"
NA = "NA: None applying"
GOOD = "The picture shows {what}; under the guidelines of this category that makes it {rating}."
LOOP = "the image shows a sign " * 12


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


# -- the checks ----------------------------------------------------------------------------------


def test_repeated_ngram_ratio_by_hand() -> None:
    assert repeated_ngram_ratio("") == 0.0
    assert repeated_ngram_ratio("one two") == 0.0  # no trigram at all
    assert repeated_ngram_ratio("a b c d e f") == 0.0
    # a b c a b c: trigrams abc bca cab abc -> 1 of 4 repeats.
    assert repeated_ngram_ratio("a b c a b c") == pytest.approx(0.25)
    # Case and punctuation do not hide a loop: 60 words, 58 trigrams, 5 distinct.
    assert repeated_ngram_ratio(LOOP.upper().replace(" sign", ", sign.")) == pytest.approx(53 / 58)
    assert repeated_ngram_ratio("x y x y", n=2) == pytest.approx(1 / 3)


def result(rating: str, category: str, rationale: str) -> EngineResult:
    answer = Assessment(rating=rating, category=category, rationale=rationale)  # type: ignore[arg-type]
    return EngineResult(assessment=answer, raw_output="{...}")


UNSAFE_SAMPLE = Sample(id="u", image="u.png", rating="Unsafe", category=O1)
FINE = GOOD.format(what="a crowd holding signs that demean a group", rating="Unsafe")


def test_an_answer_that_fits_the_label_is_kept() -> None:
    assert (
        accepted_rationale(result("Unsafe", O1, f"  {FINE} "), UNSAFE_SAMPLE, max_repeat=0.2)
        == FINE
    )


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (result("Safe", NA, FINE), "contradicts the label: rating Safe, not Unsafe"),
        (
            result("Unsafe", "O2: Violence, Harm, or Cruelty", FINE),
            "contradicts the label: category",
        ),
        (result("Unsafe", O1, "Hateful signs."), "too short (2 words)"),
        (result("Unsafe", O1, FINE + " It goes on [truncated]"), "cut off"),
        (result("Unsafe", O1, LOOP), "repetitive (0.91 of word trigrams repeated)"),
        (
            EngineResult(error_code=ErrorCode.UNPARSEABLE_OUTPUT, error_message="no JSON object"),
            "unparseable: no JSON object",
        ),
    ],
)
def test_answers_that_do_not_fit_are_rejected(answer: EngineResult, reason: str) -> None:
    with pytest.raises(Rejected) as caught:
        accepted_rationale(answer, UNSAFE_SAMPLE, max_repeat=MAX_REPEAT)
    assert str(caught.value).startswith(reason)


def test_the_bound_on_repeats_is_the_callers() -> None:
    text = "a b c a b c d e f g h"  # 9 trigrams, 1 repeated
    answer = result("Unsafe", O1, text)
    assert accepted_rationale(answer, UNSAFE_SAMPLE, max_repeat=0.2) == text
    with pytest.raises(Rejected, match="repetitive"):
        accepted_rationale(answer, UNSAFE_SAMPLE, max_repeat=0.1)
    assert CLI_MAX_REPEAT == MAX_REPEAT


def test_the_prompt_names_the_label() -> None:
    prompt = rationale_prompt("POLICY", "Unsafe", O1)
    assert prompt.startswith("POLICY\n\n")
    assert f'rating "Unsafe", category "{O1}"' in prompt and "for a safe image" not in prompt
    assert "why none of the categories is violated" in rationale_prompt("P", "Safe", NA)
    assert reason_kind("contradicts the label: rating Safe, not Unsafe") == "contradicts the label"
    assert reason_kind("too short (2 words)") == "too short"


# -- the journal ---------------------------------------------------------------------------------


def test_the_journal_reads_back_and_later_lines_win(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    lines = [
        {"id": "a", "rationale": "first"},
        {"id": "b", "rejected": "too short (2 words)", "output": "x"},
        {"id": "b", "rationale": "retried"},
        {"id": "c", "rejected": "repetitive", "output": ""},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    journal = read_journal(path)
    assert journal.rationales == {"a": "first", "b": "retried"}
    assert journal.rejected == {"c": "repetitive"}
    assert read_journal(tmp_path / "none.jsonl").rationales == {}


def test_a_line_torn_by_a_crash_is_dropped_and_other_bad_lines_named(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    good = json.dumps({"id": "a", "rationale": "kept"}) + "\n"
    path.write_text(good + '{"id": "b", "ratio')
    assert read_journal(path).rationales == {"a": "kept"}
    assert path.read_text() == good  # appending goes on from a whole line
    path.write_text(good + '{"id": "b"}\n' + good)
    with pytest.raises(ConfigError, match=r"j\.jsonl:2: not a journal line"):
        read_journal(path)


def test_rebase_keeps_images_reachable_from_another_folder(tmp_path: Path) -> None:
    dataset = tmp_path / "data" / "train.json"
    sample = Sample(id="a", image="images/a.png", rating="Safe", category=NA)
    moved = rebase(sample, dataset, tmp_path / "out" / "deep" / "train.json")
    assert moved.image == "../../data/images/a.png"
    assert rebase(sample, dataset, tmp_path / "data" / "other.json") == sample
    remote = Sample(id="b", image="s3://bucket/b.png", rating="Safe", category=NA)
    assert rebase(remote, dataset, tmp_path / "out" / "x.json") == remote


# -- whole runs against the test server ----------------------------------------------------------

Respond = Callable[[str, Image.Image, CompletionParams], str]
SAMPLE_ID = re.compile(r"^Policy text for (\S+)\.")


def answer(rating: str, category: str, rationale: str) -> str:
    return json.dumps({"rating": rating, "category": category, "rationale": rationale})


def scripted(script: dict[str, str]) -> Respond:
    """Answers by the sample id its prompt names; the warm-up (default policy) gets a verdict."""

    def respond(prompt: str, image: Image.Image, params: CompletionParams) -> str:
        found = SAMPLE_ID.match(prompt)
        if found is None:
            return answer("Safe", NA, "warm-up")
        reply = script[found.group(1)]
        if reply == "FAIL":
            raise RequestRejected("the model crashed", status=500, kind="server_error")
        return reply

    return respond


def good(sample_id: str, rating: str, category: str) -> str:
    return answer(rating, category, GOOD.format(what=f"sample {sample_id}", rating=rating))


LABELS = {
    "s0": ("Unsafe", O1),
    "s1": ("Safe", NA),
    "s2": ("Unsafe", O1),
    "s3": ("Safe", NA),
    "s4": ("Unsafe", O1),
    "s5": ("Safe", NA),
    "s6": ("Safe", NA),
}
FIRST_RUN = {
    "s0": good("s0", "Unsafe", O1),
    "s1": good("s1", "Safe", NA),
    "s2": answer("Safe", NA, GOOD.format(what="a protest", rating="Safe")),  # contradicts
    "s3": answer("Safe", NA, LOOP),  # repetitive
    "s5": "I would rather not say.",  # unparseable
    "s6": answer("Safe", NA, "A field."),  # too short
}
ALL_GOOD = {i: good(i, *LABELS[i]) for i in LABELS}


@pytest.fixture
def server() -> Iterator[OpenAITestServer]:
    with OpenAITestServer(ScriptedBackend(respond=scripted(FIRST_RUN))) as srv:
        yield srv


def make_dataset(root: Path) -> Path:
    """Seven samples with generated images, in data/; s4 already has a rationale."""
    folder = root / "data"
    (folder / "images").mkdir(parents=True)
    samples = []
    for n, (sample_id, (rating, category)) in enumerate(LABELS.items()):
        Image.new("RGB", (32 + n, 40), (30 * n, 90, 200)).save(
            folder / "images" / f"{sample_id}.png"
        )
        samples.append(
            Sample(
                id=sample_id,
                image=f"images/{sample_id}.png",
                rating=rating,  # type: ignore[arg-type]
                category=category,
                rationale="Written by a person." if sample_id == "s4" else None,
                prompt=f"Policy text for {sample_id}.",
            )
        )
    path = folder / "train.json"
    write_dataset(path, samples)
    return path


def run(tmp_path: Path, server: OpenAITestServer, *extra: str) -> int:
    config = tmp_path / "s.yaml"
    engine = {"base_url": server.url, "retries": 0, "openai": {"attempts": 1}}
    config.write_text(yaml.safe_dump({"engine": engine}), encoding="utf-8")
    dataset, out = tmp_path / "data" / "train.json", tmp_path / "out" / "train.jsonl"
    argv = ["dataset", "rationales", str(dataset), str(out), "--engine", "openai"]
    return main([*argv, "--model", server.model, "--config", str(config), *extra])


def asked(server: OpenAITestServer) -> list[str]:
    """The sample ids the server was asked about, in order (the warm-ups left out)."""
    prompts = [call[0] for call in server.backend.calls]  # type: ignore[attr-defined]
    return [m.group(1) for p in prompts if (m := SAMPLE_ID.match(p))]


def test_a_bad_journal_line_is_reported_before_the_engine_loads(
    tmp_path: Path, server: OpenAITestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dataset(tmp_path)
    (tmp_path / "out").mkdir()
    journal_path(tmp_path / "out" / "train.jsonl").write_text('{"id": "s0"}\n')
    assert run(tmp_path, server) == 2
    err = capsys.readouterr().err
    assert err.endswith("train.jsonl.progress.jsonl:1: not a journal line (remove the file to "
                        "start over)\n")  # fmt: skip
    assert "loading" not in err
    assert server.backend.calls == []  # type: ignore[attr-defined]


def test_a_run_keeps_good_answers_rejects_the_rest_and_resumes(
    tmp_path: Path, server: OpenAITestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dataset(tmp_path)
    (tmp_path / "out").mkdir()
    assert run(tmp_path, server) == 0
    out = capsys.readouterr().out
    assert sorted(asked(server)) == ["s0", "s1", "s2", "s3", "s5", "s6"]  # not s4
    prompts = [c[0] for c in server.backend.calls]  # type: ignore[attr-defined]
    assert any(p.endswith('rating "Unsafe", category "' + O1 + '". Answer with exactly this '
               "rating and category. In the rationale, describe what the image shows and "
               "explain why this rating is right with reference to the guidelines of that "
               "category.") for p in prompts)  # fmt: skip
    written = {s.id: s for s in read_dataset(tmp_path / "out" / "train.jsonl")}
    assert written["s0"].rationale == GOOD.format(what="sample s0", rating="Unsafe")
    assert written["s1"].rationale == GOOD.format(what="sample s1", rating="Safe")
    assert written["s4"].rationale == "Written by a person."
    assert [written[i].rationale for i in ("s2", "s3", "s5", "s6")] == [None] * 4
    assert written["s0"].image == "../data/images/s0.png"
    assert (tmp_path / "out" / written["s0"].image).is_file()
    assert "rationales: 6 sample(s) lacked one; this run: 2 filled, 4 rejected, 0 failed" in out
    for kind in ("contradicts the label", "repetitive", "unparseable", "too short"):
        assert f"  rejected: {kind}: 1" in out
    journal = journal_path(tmp_path / "out" / "train.jsonl")
    kinds = Counter("rationale" if "rationale" in json.loads(x) else "rejected"
                    for x in journal.read_text().splitlines())  # fmt: skip
    assert kinds == {"rationale": 2, "rejected": 4}

    # Again: nothing left to ask, so the engine is not even loaded (no warm-up request).
    calls = len(server.backend.calls)  # type: ignore[attr-defined]
    assert run(tmp_path, server) == 0
    assert len(server.backend.calls) == calls  # type: ignore[attr-defined]
    out, err = capsys.readouterr()
    assert "this run: 0 filled, 0 rejected, 0 failed; skipped (done earlier): 6" in out
    nothing = "rationales: nothing to ask: every sample lacking a rationale has an outcome in"
    assert f"{nothing} {journal} (the engine is not loaded)" in err
    assert "loading" not in err

    # The rejected ones asked again, of a model that now answers well.
    server.backend = ScriptedBackend(respond=scripted(ALL_GOOD))
    assert run(tmp_path, server, "--retry-rejected") == 0
    assert sorted(asked(server)) == ["s2", "s3", "s5", "s6"]
    written = {s.id: s for s in read_dataset(tmp_path / "out" / "train.jsonl")}
    assert all(s.rationale for s in written.values())
    assert "wrote " in capsys.readouterr().out


def test_limit_then_resume_asks_each_sample_once(
    tmp_path: Path, server: OpenAITestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.backend = ScriptedBackend(respond=scripted(ALL_GOOD))
    make_dataset(tmp_path)
    (tmp_path / "out").mkdir()
    assert run(tmp_path, server, "--limit", "2") == 0
    assert sorted(asked(server)) == ["s0", "s1"]
    partial = read_dataset(tmp_path / "out" / "train.jsonl")
    assert [s.id for s in partial if s.rationale] == ["s0", "s1", "s4"]
    assert run(tmp_path, server) == 0
    assert sorted(asked(server)) == ["s0", "s1", "s2", "s3", "s5", "s6"]
    assert all(s.rationale for s in read_dataset(tmp_path / "out" / "train.jsonl"))


def test_attempts_ask_a_rejected_sample_again(
    tmp_path: Path, server: OpenAITestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    replies = {i: [FIRST_RUN.get(i, ALL_GOOD[i]), ALL_GOOD[i]] for i in LABELS}

    def respond(prompt: str, image: Image.Image, params: CompletionParams) -> str:
        found = SAMPLE_ID.match(prompt)
        if found is None:
            return answer("Safe", NA, "warm-up")
        queue = replies[found.group(1)]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    server.backend = ScriptedBackend(respond=respond)
    make_dataset(tmp_path)
    (tmp_path / "out").mkdir()
    assert run(tmp_path, server, "--attempts", "2") == 0
    assert Counter(asked(server)) == {"s0": 1, "s1": 1, "s2": 2, "s3": 2, "s5": 2, "s6": 2}
    assert all(s.rationale for s in read_dataset(tmp_path / "out" / "train.jsonl"))
    assert "this run: 6 filled, 0 rejected, 0 failed" in capsys.readouterr().out


def test_engine_errors_are_not_journalled_and_fail_the_run(
    tmp_path: Path, server: OpenAITestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.backend = ScriptedBackend(respond=scripted({**ALL_GOOD, "s3": "FAIL"}))
    make_dataset(tmp_path)
    (tmp_path / "out").mkdir()
    assert run(tmp_path, server) == 1
    out, err = capsys.readouterr()
    assert "this run: 5 filled, 0 rejected, 1 failed" in out
    assert err.splitlines()[-1] == (
        "moderator: dataset rationales: 1 sample(s) failed (engine_error 1); "
        "run the command again to retry them"
    )
    server.backend = ScriptedBackend(respond=scripted(ALL_GOOD))
    assert run(tmp_path, server) == 0
    assert asked(server) == ["s3"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-repeat", "1.5"], "--max-repeat must be 0..1, got 1.5"),
        (["--attempts", "0"], "--attempts must be at least 1, got 0"),
        (["--limit", "0"], "--limit must be at least 1, got 0"),
    ],
)
def test_bad_flags_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    dataset = make_dataset(tmp_path)
    argv = ["dataset", "rationales", str(dataset), str(tmp_path / "o.json"), "--engine", "fake"]
    assert main([*argv, *extra]) == 2
    assert capsys.readouterr().err == f"moderator: dataset rationales: {message}\n"


def test_output_and_engine_are_checked_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path)
    base = ["dataset", "rationales", str(dataset)]
    assert main([*base, str(dataset), "--engine", "fake"]) == 2
    assert "OUT must not be the input dataset" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "no" / "o.json"), "--engine", "fake"]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "o.json")]) == 2
    assert "--engine E is required" in capsys.readouterr().err
    (tmp_path / "data" / "images" / "s2.png").unlink()
    assert main([*base, str(tmp_path / "o.json"), "--engine", "fake"]) == 2
    assert f"1 image file(s) not found: {dataset} sample 's2' (images/s2.png)" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "o.json").exists()


def test_a_smoke_test_model_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fake engine's stand-in rationales could end up in a training set: say so."""
    make_dataset(tmp_path)
    dataset, out = tmp_path / "data" / "train.json", tmp_path / "o.json"
    code = main(["dataset", "rationales", str(dataset), str(out), "--engine", "fake"])
    err = capsys.readouterr().err
    assert code in (0, 1), err
    assert "rationales: SMOKE-TEST model (fake: " in err
    assert "do not train on them" in err
