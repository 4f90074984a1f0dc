"""`moderator dataset rationales`: fill missing rationales with a guard model told the answer.

Each sample without a rationale is sent through the configured engine (the same engine and
window code as the service, moderator/training/evaluate.py) with its prompt followed by a hint
that names its true rating and category. The answer is kept only when it agrees with the label
and reads as prose: an unparseable answer, one whose rating or category differs from the label,
a rationale cut off or shorter than MIN_WORDS words, or one whose share of repeated word
trigrams is above `max_repeat` is rejected (and asked again while attempts remain).

Resumable: every outcome is appended to a journal (JSON Lines, `<out>.progress.jsonl`) as it
arrives; a new run skips the ids the journal already has (rejected ones too, unless told to
retry them) and the output dataset is written from the journal at the end. Engine and image
errors are not journalled: a rerun tries those samples again.

A rationale from a smoke-test model (the `fake` engine, a tiny checkpoint) is journalled with
`"smoke_test": true` and its sample written with `rationale_smoke_test: true`, so that nothing
trains on it unknowingly (moderator.training.dataset.smoke_test_rationales finds them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from moderator.engine.base import EngineResult
from moderator.errors import ConfigError, ErrorCode
from moderator.settings import Settings
from moderator.training.dataset import Sample, resolve_image, write_dataset
from moderator.training.evaluate import Engines, ImageSource, Job
from moderator.training.run_progress import RunProgress

JOURNAL_SUFFIX = ".progress.jsonl"
NGRAM = 3
MAX_REPEAT = 0.2
"""Default bound on the share of repeated word trigrams (fluent prose stays far below)."""
MIN_WORDS = 8
TRUNCATED = "[truncated]"  # the marker the output parser puts on a cut-off rationale

HINT = (
    "The correct assessment of this image under the policy above is known: rating "
    '"{rating}", category "{category}". Answer with exactly this rating and category. In the '
    "rationale, describe what the image shows and explain why this rating is right with "
    "reference to the guidelines of that category{safe_clause}."
)
SAFE_CLAUSE = " (for a safe image: why none of the categories is violated)"


def rationale_prompt(prompt: str, rating: str, category: str) -> str:
    """The sample's prompt with the hint naming its true rating and category appended."""
    safe = SAFE_CLAUSE if rating == "Safe" else ""
    return f"{prompt}\n\n" + HINT.format(rating=rating, category=category, safe_clause=safe)


def repeated_ngram_ratio(text: str, n: int = NGRAM) -> float:
    """The share of the text's word n-grams (case-folded) that repeat an earlier one: 0 for
    text without repeats, near 1 for a phrase looping until the token limit."""
    words = re.findall(r"\w+", text.casefold())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


class Rejected(Exception):
    """An answer that cannot serve as the sample's rationale; the message says why."""


def accepted_rationale(result: EngineResult, sample: Sample, *, max_repeat: float) -> str:
    """The rationale of a model answer that fits the sample's label; Rejected otherwise.
    Call only for results that are the model's answer (not engine or image errors)."""
    if result.assessment is None:
        raise Rejected(f"unparseable: {result.error_message}")
    answer = result.assessment
    if answer.rating != sample.rating:
        raise Rejected(f"contradicts the label: rating {answer.rating}, not {sample.rating}")
    if answer.category != sample.category:
        raise Rejected(f"contradicts the label: category {answer.category!r}")
    text = answer.rationale.strip()
    if text.endswith(TRUNCATED):
        raise Rejected("cut off (generation.max_new_tokens reached)")
    words = len(re.findall(r"\w+", text))
    if words < MIN_WORDS:
        raise Rejected(f"too short ({words} words)")
    ratio = repeated_ngram_ratio(text)
    if ratio > max_repeat:
        raise Rejected(f"repetitive ({ratio:.2f} of word trigrams repeated)")
    return text


def reason_kind(reason: str) -> str:
    """The kind of a rejection, for the summary: the reason up to its first ':' or '('."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip()


# -- the journal ---------------------------------------------------------------------------------


def journal_path(out: Path) -> Path:
    return out.with_name(out.name + JOURNAL_SUFFIX)


@dataclass
class Journal:
    """Outcomes by id, as read from the journal file: a rationale, or a rejection reason; and
    the ids whose rationale a smoke-test model wrote."""

    rationales: dict[str, str] = dataclasses.field(default_factory=dict)
    rejected: dict[str, str] = dataclasses.field(default_factory=dict)
    smoke_test: set[str] = dataclasses.field(default_factory=set)

    def record(self, doc: dict[str, Any]) -> None:
        sample_id = doc["id"]
        self.smoke_test.discard(sample_id)
        if "rationale" in doc:
            self.rationales[sample_id] = doc["rationale"]
            self.rejected.pop(sample_id, None)
            if doc.get("smoke_test") is True:
                self.smoke_test.add(sample_id)
        else:
            self.rejected[sample_id] = doc["rejected"]
            self.rationales.pop(sample_id, None)


def read_journal(path: Path) -> Journal:
    """The journal's outcomes (later lines win). A last line cut off by a crash is removed
    from the file; any other bad line is a ConfigError naming it."""
    journal = Journal()
    if not path.exists():
        return journal
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):  # torn by a crash while writing: drop the fragment
        keep = data.rfind(b"\n") + 1
        with path.open("r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            valid = isinstance(doc, dict) and isinstance(doc.get("id"), str)
            valid = valid and (
                isinstance(doc.get("rationale"), str) or isinstance(doc.get("rejected"), str)
            )
            valid = valid and isinstance(doc.get("smoke_test", False), bool)
        except json.JSONDecodeError:
            valid = False
        if not valid:
            raise ConfigError(
                f"{path}:{number}: not a journal line (remove the file to start over)"
            )
        journal.record(doc)
    return journal


class JournalWriter:
    """Appends outcomes, one flushed line each, from any thread."""

    def __init__(self, stream: TextIO, journal: Journal) -> None:
        self._stream = stream
        self._journal = journal
        self._lock = threading.Lock()

    def write(self, doc: dict[str, Any]) -> None:
        with self._lock:
            self._stream.write(json.dumps(doc, ensure_ascii=False) + "\n")
            self._stream.flush()
            self._journal.record(doc)


# -- running -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    max_repeat: float = MAX_REPEAT
    attempts: int = 1
    limit: int | None = None
    retry_rejected: bool = False


@dataclass
class Outcome:
    """What a run did."""

    lacking: int  # samples without a rationale in the dataset
    earlier: int  # of which had an outcome in the journal before this run and were skipped
    left: int = 0  # of which were not asked in this run because of --limit
    filled: int = 0  # rationales accepted by this run
    rejected: Counter[str] = dataclasses.field(default_factory=Counter)  # final, by kind
    failed: Counter[str] = dataclasses.field(default_factory=Counter)  # by error code
    total_filled: int = 0  # rationales in the written dataset that came from the journal
    total_rejected: int = 0  # samples still without one after a final rejection
    total_smoke_test: int = 0  # written rationales that a smoke-test model wrote (marked)


def pending_samples(samples: Sequence[Sample], journal: Journal, options: Options) -> list[Sample]:
    """The samples lacking a rationale and without an outcome yet (all of them: `--limit` is
    applied by the caller)."""
    done = set(journal.rationales)
    if not options.retry_rejected:
        done |= set(journal.rejected)
    return [s for s in samples if not s.rationale and s.id not in done]


@dataclass(frozen=True)
class Target:
    """Where the samples come from and go: the dataset file, the output file, and the default
    policy's prompt for samples without one."""

    dataset: Path
    out: Path
    default_prompt: str


@dataclass
class Plan:
    """A run's work, known from the dataset and the journal before any engine is loaded: the
    samples still to ask (`todo`, after --limit) and the outcome so far."""

    samples: list[Sample]
    journal: Journal
    todo: list[Sample]
    outcome: Outcome


def plan_run(samples: Sequence[Sample], out: Path, options: Options) -> Plan:
    """Read OUT's journal (a ConfigError names a bad line) and pick the samples to ask."""
    journal = read_journal(journal_path(out))
    lacking = [s for s in samples if not s.rationale]
    pending = pending_samples(samples, journal, options)
    todo = pending[: options.limit] if options.limit is not None else pending
    outcome = Outcome(
        lacking=len(lacking), earlier=len(lacking) - len(pending), left=len(pending) - len(todo)
    )
    return Plan(list(samples), journal, todo, outcome)


def fill_rationales(
    plan: Plan,
    target: Target,
    engines: Engines,
    settings: Settings,
    options: Options,
    progress_stream: TextIO,
) -> Outcome:
    """Ask the engine for every sample of the plan (attempt by attempt), journal each outcome,
    then write the dataset with the journal's rationales to `target.out`."""
    outcome, todo = plan.outcome, plan.todo
    smoke_test = engines.engine.info.smoke_test
    images = ImageSource(target.dataset, settings)
    with journal_path(target.out).open("a", encoding="utf-8") as stream:
        writer = JournalWriter(stream, plan.journal)
        for attempt in range(1, options.attempts + 1):
            if not todo:
                break
            label = "rationales" if options.attempts == 1 else f"rationales {attempt}"
            run = _Attempt(
                todo, writer, outcome, options, final=attempt == options.attempts, smoke=smoke_test
            )
            jobs = [
                Job(
                    s.id,
                    s.image,
                    rationale_prompt(s.prompt or target.default_prompt, s.rating, s.category),
                )
                for s in todo
            ]
            engines.runner(settings, images, "rationales").run(
                jobs, run.judged, RunProgress(progress_stream, label)
            )
            todo = [s for s in todo if s.id in run.again]
    return write_output(plan, target.dataset, target.out)


def write_output(plan: Plan, dataset: Path, out: Path) -> Outcome:
    """Write `out`: the dataset with the journal's rationales; the outcome with its totals."""
    outcome, journal = plan.outcome, plan.journal
    lacking = [s for s in plan.samples if not s.rationale]
    outcome.total_filled = sum(1 for s in lacking if s.id in journal.rationales)
    outcome.total_rejected = sum(1 for s in lacking if s.id in journal.rejected)
    outcome.total_smoke_test = sum(1 for s in lacking if s.id in journal.smoke_test)
    filled = [_with_rationale(s, journal) for s in plan.samples]
    write_dataset(out, [rebase(s, dataset, out) for s in filled])
    return outcome


class _Attempt:
    """One pass over the pending samples: judges each result (on engine window threads)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        writer: JournalWriter,
        outcome: Outcome,
        options: Options,
        *,
        final: bool,
        smoke: bool,
    ) -> None:
        self._samples = {s.id: s for s in samples}
        self._smoke = smoke
        self._writer = writer
        self._outcome = outcome
        self._options = options
        self._final = final
        self._lock = threading.Lock()
        self.again: set[str] = set()  # ids rejected with attempts left

    def judged(self, job: Job, result: EngineResult) -> None:
        sample = self._samples[job.id]
        if result.error_code not in (None, ErrorCode.UNPARSEABLE_OUTPUT):
            with self._lock:
                self._outcome.failed[str(result.error_code)] += 1
            return
        try:
            text = accepted_rationale(result, sample, max_repeat=self._options.max_repeat)
        except Rejected as exc:
            if not self._final:
                with self._lock:
                    self.again.add(sample.id)
                return
            doc = {"id": sample.id, "rejected": str(exc), "output": result.raw_output or ""}
            self._writer.write(doc)
            with self._lock:
                self._outcome.rejected[reason_kind(str(exc))] += 1
            return
        kept: dict[str, Any] = {"id": sample.id, "rationale": text}
        if self._smoke:
            kept["smoke_test"] = True
        self._writer.write(kept)
        with self._lock:
            self._outcome.filled += 1


def _with_rationale(sample: Sample, journal: Journal) -> Sample:
    if sample.rationale or sample.id not in journal.rationales:
        return sample
    return dataclasses.replace(
        sample,
        rationale=journal.rationales[sample.id],
        rationale_smoke_test=sample.id in journal.smoke_test,
    )


def rebase(sample: Sample, dataset: Path, out: Path) -> Sample:
    """The sample with a relative image path rewritten for a file in `out`'s folder."""
    where = resolve_image(dataset, sample.image)
    if not isinstance(where, Path) or Path(sample.image).is_absolute():
        return sample
    if dataset.parent.resolve() == out.parent.resolve():
        return sample
    image = os.path.relpath(where.resolve(), out.parent.resolve())
    return dataclasses.replace(sample, image=image)
