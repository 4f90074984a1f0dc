"""Predictions files: a guard model's raw answers, one JSON object per line, scored offline.

Each line is `{"id": "<sample id>", "output": "<raw model text>"}`, optionally with
`"score": <P(Unsafe) in [0, 1]>`; other keys are ignored and blank lines skipped. The output
is parsed by the service's own guard output parser (moderator/engine/guard/output.py), so a
text the service could not read counts as unparseable here too (rating None). A line that is
not such an object is an error naming its line; ids the dataset does not have, and samples
without a prediction, are reported by `match`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moderator.engine.base import EngineResult
from moderator.engine.guard.output import UnparseableOutput, parse_output
from moderator.errors import ConfigError
from moderator.events.verdict import CATEGORIES
from moderator.training.dataset import Sample
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


def prediction_from_result(sample_id: str, result: EngineResult) -> Prediction:
    """The Prediction for an engine's result: the assessment it parsed, with its score and raw
    text; an error result (unparseable output, engine error, timeout) has rating None."""
    output = result.raw_output or ""
    if result.assessment is None:
        return Prediction(id=sample_id, rating=None, category=None, score=None, output=output)
    assessment = result.assessment
    return Prediction(
        id=sample_id,
        rating=assessment.rating,
        category=assessment.category,
        score=assessment.score,
        output=output,
    )


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
            sample_id, output, score = _fields(line)
        except ValueError as exc:
            errors.append(f"{path}:{number}: {exc}")
            continue
        if sample_id in first_line:
            errors.append(
                f"{path}:{number}: id {sample_id!r} already on line {first_line[sample_id]}"
            )
            continue
        first_line[sample_id] = number
        predictions.append(parse_prediction(sample_id, output, score))
    if errors:
        more = f" (+{len(errors) - 1} more bad lines)" if len(errors) > 1 else ""
        raise ConfigError(errors[0] + more)
    if not predictions:
        raise ConfigError(f"--predictions: {path} holds no predictions")
    return predictions


def write_predictions(path: Path, predictions: Iterable[Prediction]) -> None:
    """Write predictions in the file format `read_predictions` reads (id, output, score when
    known), so an engine run can be scored again without the model."""
    with path.open("w", encoding="utf-8") as out:
        for p in predictions:
            doc: dict[str, Any] = {"id": p.id, "output": p.output}
            if p.score is not None:
                doc["score"] = p.score
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


def match(samples: Sequence[Sample], predictions: Sequence[Prediction]) -> Matched:
    """Set each prediction against the dataset by id."""
    known = {s.id for s in samples}
    predicted = {p.id for p in predictions}
    return Matched(
        predictions=[p for p in predictions if p.id in known],
        unknown_ids=[p.id for p in predictions if p.id not in known],
        missing_ids=[s.id for s in samples if s.id not in predicted],
    )


def listed(ids: Sequence[str]) -> str:
    """The first few ids, quoted, and how many more."""
    shown = ", ".join(repr(i) for i in ids[:MAX_LISTED])
    return shown + (f" (+{len(ids) - MAX_LISTED} more)" if len(ids) > MAX_LISTED else "")


def not_found(missing: Sequence[str]) -> str:
    """`2 image file(s) not found (for 6 samples): 'a.png', 'b.png'`: each image once, from
    the samples' image references that name no file (one per sample)."""
    unique = list(dict.fromkeys(missing))
    samples = f" (for {len(missing)} samples)" if len(missing) != len(unique) else ""
    return f"{len(unique)} image file(s) not found{samples}: {listed(unique)}"


def _fields(line: str) -> tuple[str, str, float | None]:
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(doc, dict):
        raise ValueError('not a JSON object (expected {"id": ..., "output": ...})')
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
