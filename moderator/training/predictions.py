"""Predictions files: a guard model's raw answers, one JSON object per line, scored offline.

Each line is `{"id": "<sample id>", "output": "<raw model text>"}`, optionally with
`"score": <P(Unsafe) in [0, 1]>`; a request that failed without an answer has `"error"` (its
error code) and `"error_message"`, and an answer of a smoke-test model `"smoke_test": true`.
Other keys are ignored and blank lines skipped. The output is parsed by the service's own guard
output parser (moderator/engine/guard/output.py), so a text the service could not read counts
as unparseable here too (rating None). A line that is not such an object is an error naming its
line; ids the dataset does not have, and samples without a prediction, are reported by `match`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moderator.engine.base import EngineResult
from moderator.engine.guard.output import UnparseableOutput, parse_output
from moderator.errors import ConfigError, ErrorCode
from moderator.events.verdict import CATEGORIES
from moderator.training.dataset import Sample, resolve_image
from moderator.training.metrics import Prediction

MAX_LISTED = 5  # ids named in a message before "+N more"


def parse_prediction(
    sample_id: str,
    output: str,
    score: float | None = None,
    categories: Sequence[str] = CATEGORIES,
) -> Prediction:
    """The Prediction for one raw model text: its rating and category as the service reads
    them, or rating and category None when the text holds no usable verdict."""
    try:
        parsed = parse_output(output, categories)
    except UnparseableOutput:
        return Prediction(id=sample_id, rating=None, category=None, score=score, output=output)
    return Prediction(
        id=sample_id, rating=parsed.rating, category=parsed.category, score=score, output=output
    )


def prediction_from_result(
    sample_id: str, result: EngineResult, *, smoke_test: bool = False
) -> Prediction:
    """The Prediction for an engine's result: the assessment it parsed, with its score and raw
    text. An error result has rating None: unparseable output keeps only its text, any other
    error (an image that could not be read or decoded, an engine error or timeout) is a failed
    request with its error code and message."""
    output = result.raw_output or ""
    if result.assessment is None:
        code = result.error_code
        failed = code is not None and code is not ErrorCode.UNPARSEABLE_OUTPUT
        return Prediction(
            id=sample_id,
            rating=None,
            category=None,
            score=None,
            output=output,
            error=code.value if failed and code is not None else None,
            error_message=result.error_message if failed else None,
            smoke_test=smoke_test,
        )
    assessment = result.assessment
    return Prediction(
        id=sample_id,
        rating=assessment.rating,
        category=assessment.category,
        score=assessment.score,
        output=output,
        smoke_test=smoke_test,
    )


def error_counts(predictions: Iterable[Prediction]) -> dict[str, int]:
    """Request errors by code, as a report's header has them: each failed request's code, and
    `unparseable_output` for each answer the parser could not read; most frequent first."""
    counts: Counter[str] = Counter()
    for p in predictions:
        if p.error is not None:
            counts[p.error] += 1
        elif p.rating is None:
            counts[ErrorCode.UNPARSEABLE_OUTPUT.value] += 1
    return dict(counts.most_common())


def failure_lines(samples: Sequence[Sample], predictions: Sequence[Prediction]) -> list[str]:
    """One line per error code of the failed requests, most frequent first: how many samples,
    the first few (id and image) and the first one's message."""
    images = {s.id: s.image for s in samples}
    by_code: dict[str, list[Prediction]] = {}
    for p in predictions:
        if p.error is not None:
            by_code.setdefault(p.error, []).append(p)
    lines = []
    for code, failed in sorted(by_code.items(), key=lambda item: (-len(item[1]), item[0])):
        named = [f"{p.id!r} ({images.get(p.id, '?')})" for p in failed[:MAX_LISTED]]
        more = f" (+{len(failed) - MAX_LISTED} more)" if len(failed) > MAX_LISTED else ""
        message = f"; first error: {failed[0].error_message}" if failed[0].error_message else ""
        lines.append(
            f"{len(failed)} sample(s) failed with {code} (no answer; counted as wrong): "
            f"{', '.join(named)}{more}{message}"
        )
    return lines


def read_predictions(path: Path) -> list[Prediction]:
    """Every prediction in the file, in file order. ConfigError (one line: `path:line: reason`,
    plus how many more lines are bad) when the file cannot be read or a line is not a
    prediction, or when an id appears twice."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"--predictions: no such file: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"--predictions: cannot read {path}: {reason}") from exc
    predictions: list[Prediction] = []
    errors: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            prediction = _line_prediction(line)
        except ValueError as exc:
            errors.append(f"{path}:{number}: {exc}")
            continue
        if prediction.id in first_line:
            errors.append(
                f"{path}:{number}: id {prediction.id!r} already on line {first_line[prediction.id]}"
            )
            continue
        first_line[prediction.id] = number
        predictions.append(prediction)
    if errors:
        more = f" (+{len(errors) - 1} more bad lines)" if len(errors) > 1 else ""
        raise ConfigError(errors[0] + more)
    if not predictions:
        raise ConfigError(f"--predictions: {path} holds no predictions")
    return predictions


def write_predictions(path: Path, predictions: Iterable[Prediction]) -> None:
    """Write predictions in the file format `read_predictions` reads (id, output, score when
    known, a failed request's error code and message, the smoke-test flag when set), so an
    engine run can be scored again without the model."""
    with path.open("w", encoding="utf-8") as out:
        for p in predictions:
            doc: dict[str, Any] = {"id": p.id, "output": p.output}
            if p.score is not None:
                doc["score"] = p.score
            if p.error is not None:
                doc["error"] = p.error
                doc["error_message"] = p.error_message or ""
            if p.smoke_test:
                doc["smoke_test"] = True
            out.write(json.dumps(doc, ensure_ascii=False) + "\n")


@dataclass(frozen=True)
class Matched:
    """A predictions file set against a dataset: the predictions for dataset ids, and what
    did not pair. Samples without a prediction stay in the evaluation and count as wrong
    (`missing` in the metrics)."""

    predictions: list[Prediction]  # those for ids in the dataset, in file order
    unknown_ids: list[str]  # predicted ids that are not in the dataset, in file order
    missing_ids: list[str]  # dataset ids without a prediction, in dataset order

    def notes(self) -> list[str]:
        """One line for each kind of mismatch (none when everything paired)."""
        lines = []
        if self.unknown_ids:
            lines.append(
                f"{len(self.unknown_ids)} prediction(s) for ids not in the dataset, ignored: "
                + listed(self.unknown_ids)
            )
        if self.missing_ids:
            lines.append(
                f"{len(self.missing_ids)} sample(s) without a prediction, counted as wrong "
                f"(missing): {listed(self.missing_ids)}"
            )
        return lines


def match(
    samples: Sequence[Sample], predictions: Sequence[Prediction], beyond: Collection[str] = ()
) -> Matched:
    """Set each prediction against the samples evaluated by id. `beyond` holds the ids of the
    dataset's samples left out of the evaluation (after `--limit`): their predictions are
    passed over, neither scored nor unknown."""
    known = {s.id for s in samples}
    predicted = {p.id for p in predictions}
    return Matched(
        predictions=[p for p in predictions if p.id in known],
        unknown_ids=[p.id for p in predictions if p.id not in known and p.id not in beyond],
        missing_ids=[s.id for s in samples if s.id not in predicted],
    )


def listed(ids: Sequence[str]) -> str:
    """The first few ids, quoted, and how many more."""
    shown = ", ".join(repr(i) for i in ids[:MAX_LISTED])
    return shown + (f" (+{len(ids) - MAX_LISTED} more)" if len(ids) > MAX_LISTED else "")


@dataclass(frozen=True)
class MissingImage:
    """A sample whose local image names no file: the dataset file it is in, and where the image
    was looked for."""

    dataset: Path
    sample: Sample
    path: Path


def missing_images(dataset: Path, samples: Sequence[Sample]) -> list[MissingImage]:
    """The samples of `dataset` whose local image (relative to the file's folder) names no
    file; s3:// images are not checked here."""
    return [
        MissingImage(dataset, s, where)
        for s in samples
        if isinstance(where := resolve_image(dataset, s.image), Path) and not where.is_file()
    ]


def not_found(missing: Sequence[MissingImage]) -> str:
    """`2 image file(s) not found (for 6 samples): data/test.json sample 'a' (a.png; 3 more
    sample(s) use it), ...; relative image paths are taken from the dataset file's folder
    (data)`: each image once, with the first sample that uses it."""
    users: dict[Path, list[MissingImage]] = {}
    for m in missing:
        users.setdefault(m.path, []).append(m)
    named = []
    for first, *rest in users.values():
        more = f"; {len(rest)} more sample(s) use it" if rest else ""
        named.append(f"{first.dataset} sample {first.sample.id!r} ({first.sample.image}{more})")
    count = f" (for {len(missing)} samples)" if len(missing) != len(users) else ""
    folders = list(dict.fromkeys(str(m.dataset.parent) for m in missing))
    where = f"folder ({folders[0]})" if len(folders) == 1 else "folder"
    return (
        f"{len(users)} image file(s) not found{count}: {_first(named)}; relative image paths "
        f"are taken from the dataset file's {where}"
    )


def _first(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


def _line_prediction(line: str) -> Prediction:
    """The prediction of one line; ValueError saying what is wrong with it."""
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(doc, dict):
        raise ValueError('not a JSON object (expected {"id": ..., "output": ...})')
    sample_id, output, score = _fields(doc)
    error, message = doc.get("error"), doc.get("error_message")
    if error is not None and (not isinstance(error, str) or not error):
        raise ValueError('"error" must be an error code (a non-empty string) when given')
    if message is not None and not isinstance(message, str):
        raise ValueError('"error_message" must be a string when given')
    smoke_test = doc.get("smoke_test", False)
    if not isinstance(smoke_test, bool):
        raise ValueError('"smoke_test" must be true or false when given')
    if error is None:
        prediction = parse_prediction(sample_id, output, score)
    else:  # a failed request: no answer to read, whatever the text
        prediction = Prediction(sample_id, None, None, score, output, error, message)
    return dataclasses.replace(prediction, smoke_test=smoke_test)


def _fields(doc: dict[str, Any]) -> tuple[str, str, float | None]:
    sample_id = doc.get("id")
    if not isinstance(sample_id, str) or not sample_id:
        raise ValueError('"id" must be a non-empty string')
    output = doc.get("output")
    if not isinstance(output, str):
        raise ValueError('"output" must be a string (the raw model text)')
    score = doc.get("score")
    if score is None:
        return sample_id, output, None
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise ValueError('"score" must be a number between 0 and 1')
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise ValueError(f'"score" must be between 0 and 1, got {score}')
    return sample_id, output, float(score)
