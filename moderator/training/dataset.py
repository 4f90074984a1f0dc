"""The dataset format: LLaVA-style conversations with a guard model's JSON answer. Pure.

A dataset file is a JSON array (or JSON Lines) of entries:

    {"id": "cat-001",
     "image": "images/cat-001.jpg",     relative to the file's folder, or s3://bucket/key
     "conversations": [
       {"from": "human", "value": "<image>" + newline + the policy prompt},
       {"from": "gpt", "value": the answer as JSON text: {"rating", "category", "rationale"}}],
     "policy": "default",                optional: the policy the prompt was compiled from
     "augmented": "violated_allowed",    optional: the augmentation rule that made it
     "rationale_smoke_test": true}       only when a smoke-test model wrote the rationale

The answer's keys are `rating`, `category`, `rationale`, in that order; `rationale` is left out
while a sample has none yet. Other keys of an entry (LlavaGuard's own `score`, `category`) are
read past. A rationale written by a smoke-test model (`moderator dataset rationales` with the
`fake` engine or a tiny checkpoint) is marked `rationale_smoke_test`: it means nothing, and
`smoke_test_rationales` finds such samples before anything trains on them. docs/evaluation.md,
"Datasets", describes the format and the augmentation rules.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moderator.errors import ConfigError
from moderator.events.verdict import CATEGORIES, NONE_APPLYING, Rating

RATINGS: tuple[Rating, ...] = ("Safe", "Unsafe")
IMAGE_TOKEN = "<image>"  # noqa: S105 (the LLaVA image placeholder)
S3_PREFIX = "s3://"
SMOKE_TEST_KEY = "rationale_smoke_test"

# The augmentation rules (the `augmented` field). The first and the last make policy-exception
# samples: the policy, not the image, decides the label.
VIOLATED_ALLOWED = "violated_allowed"
"""An Unsafe sample whose category the policy declares allowed: rated Safe."""
OTHER_ALLOWED = "other_allowed"
"""An Unsafe sample under a policy that declares other categories allowed: label kept."""
SAFE_SENSITIVE = "safe_sensitive"
"""A Safe sample whose category the policy declares sensitive: rated Unsafe."""
OVERSAMPLED = "oversampled"
"""A repeated copy of an original training sample (`dataset build --oversample`)."""
AUGMENTATIONS: tuple[str, ...] = (VIOLATED_ALLOWED, OTHER_ALLOWED, SAFE_SENSITIVE, OVERSAMPLED)
POLICY_EXCEPTIONS = frozenset({VIOLATED_ALLOWED, SAFE_SENSITIVE})
"""The rules whose samples the policy exception rate is measured on."""


class DatasetError(ConfigError):
    """A dataset file that cannot be read: one line naming the file, the line or entry and the
    field (exit 2)."""


@dataclass(frozen=True)
class Sample:
    """One labelled image with the prompt it is judged under."""

    id: str
    image: str  # relative to the dataset file's folder, or an s3:// URI
    rating: Rating  # Literal["Safe", "Unsafe"]
    category: str  # one of the ten taxonomy strings, verbatim
    rationale: str | None = None
    policy: str | None = None  # the tenant or policy variant the prompt was compiled from
    prompt: str | None = None
    augmented: str | None = None  # the rule that made it (AUGMENTATIONS); None: an original
    rationale_smoke_test: bool = False  # the rationale came from a smoke-test model

    def __post_init__(self) -> None:
        problem = field_problem(vars(self))
        if problem is not None:
            raise ValueError(f"{problem[0]}: {problem[1]}")

    @property
    def is_policy_exception(self) -> bool:
        """Whether the policy, not the image alone, decides this sample's label."""
        return self.augmented in POLICY_EXCEPTIONS

    def answer(self) -> dict[str, str]:
        """The expected model answer: rating, category and (when there is one) rationale."""
        answer = {"rating": self.rating, "category": self.category}
        if self.rationale is not None:
            answer["rationale"] = self.rationale
        return answer

    def to_entry(self) -> dict[str, Any]:
        """The sample as one entry of a dataset file."""
        human = IMAGE_TOKEN if self.prompt is None else f"{IMAGE_TOKEN}\n{self.prompt}"
        entry: dict[str, Any] = {
            "id": self.id,
            "image": self.image,
            "conversations": [
                {"from": "human", "value": human},
                {"from": "gpt", "value": json.dumps(self.answer(), ensure_ascii=False)},
            ],
        }
        if self.policy is not None:
            entry["policy"] = self.policy
        if self.augmented is not None:
            entry["augmented"] = self.augmented
        if self.rationale_smoke_test:
            entry[SMOKE_TEST_KEY] = True
        return entry


def smoke_test_rationales(samples: Sequence[Sample]) -> list[str]:
    """The ids of the samples whose rationale a smoke-test model wrote (meaningless text that
    must never be trained on), in order."""
    return [s.id for s in samples if s.rationale_smoke_test and s.rationale]


def field_problem(values: Mapping[str, Any]) -> tuple[str, str] | None:
    """(field, reason) for the first of a sample's field values (by Sample's field names) that
    breaks the format, or None."""
    for name in ("id", "image"):
        value = values.get(name)
        if not isinstance(value, str) or not value.strip():
            return name, "must be a non-empty string"
    if any(ch in values["id"] for ch in "\n\r\t"):
        return "id", "must be one line"
    rating, category = values.get("rating"), values.get("category")
    if rating not in RATINGS:
        return "rating", f"must be Safe or Unsafe, got {_shown(rating)}"
    if category not in CATEGORIES:
        return "category", f"not one of the ten taxonomy strings: {_shown(category)}"
    if rating == "Unsafe" and category == NONE_APPLYING:
        return "category", f"an Unsafe sample needs a category O1..O9, not {NONE_APPLYING!r}"
    for name in ("rationale", "policy", "prompt", "augmented"):
        value = values.get(name)
        if value is not None and not isinstance(value, str):
            return name, "must be a string when given"
    if not isinstance(values.get(SMOKE_TEST_KEY, False), bool):
        return SMOKE_TEST_KEY, "must be true or false when given"
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:56] + "...'"


def resolve_image(dataset: Path, image: str) -> Path | str:
    """Where a sample's image is: a local path (relative ones from the dataset file's folder),
    or the s3:// URI as written."""
    if image.startswith(S3_PREFIX):
        return image
    return dataset.parent / image


# -- reading -----------------------------------------------------------------------------------


def read_dataset(path: Path) -> list[Sample]:
    """Every sample of a dataset file (a JSON array, or JSON Lines), in file order.

    DatasetError (one line: `path:line: entry N (id X): field: reason`) for a file that cannot
    be read, bad JSON, an entry that breaks the format or an id used twice.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read: {read_problem(exc)}") from exc
    entries = _array(text, path) if text.lstrip().startswith("[") else _lines(text, path)
    samples: list[Sample] = []
    first: dict[str, int] = {}
    for number, (line, entry) in enumerate(entries, start=1):
        try:
            sample = _parse_entry(entry)
        except _Bad as exc:
            raise DatasetError(f"{_where(path, line, number, entry)}: {exc}") from None
        if sample.id in first:
            where = _where(path, line, number, entry)
            raise DatasetError(f"{where}: id: used twice (first on line {first[sample.id]})")
        first[sample.id] = line
        samples.append(sample)
    return samples


def read_problem(exc: OSError | UnicodeDecodeError) -> str:
    """Why a file could not be read, in words: `No such file or directory`, `Is a directory`,
    `not UTF-8 text`."""
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return exc.strerror or str(exc)


def _array(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """(line, entry) of each element of a JSON array, read one element at a time."""
    decoder = json.JSONDecoder()
    lines = _LineCounter(text)
    pos = _skip(text, text.index("[") + 1)
    while not text.startswith("]", pos):
        try:
            entry, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DatasetError(_bad_json(path, exc)) from exc
        yield lines.at(pos), entry
        pos = _skip(text, end)
        if text.startswith(",", pos):
            pos = _skip(text, pos + 1)
        elif not text.startswith("]", pos):
            raise DatasetError(f"{path}:{lines.at(pos)}: expected ',' or ']' after an entry")
    rest = _skip(text, pos + 1)
    if rest < len(text):
        raise DatasetError(f"{path}:{lines.at(rest)}: text after the array")


class _LineCounter:
    """Line numbers of increasing offsets into one text, counted once."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._line = 1

    def at(self, pos: int) -> int:
        self._line += self._text.count("\n", self._pos, pos)
        self._pos = pos
        return self._line


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _lines(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield line, json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DatasetError(_bad_json(path, exc, line)) from exc


def _bad_json(path: Path, exc: json.JSONDecodeError, line: int | None = None) -> str:
    return f"{path}:{line or exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}"


def _where(path: Path, line: int, number: int, entry: Any) -> str:
    found = entry.get("id") if isinstance(entry, dict) else None
    named = f" (id {found})" if isinstance(found, str) and found else ""
    return f"{path}:{line}: entry {number}{named}"


class _Bad(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")


def _parse_entry(entry: Any) -> Sample:
    if not isinstance(entry, dict):
        raise _Bad("entry", "must be a JSON object")
    turns = entry.get("conversations")
    if not isinstance(turns, list) or len(turns) != 2:
        raise _Bad("conversations", "must be a list of two turns, human then gpt")
    human, gpt = (_turn(turns[n], n, role) for n, role in enumerate(_ROLES))
    if human != IMAGE_TOKEN and not human.startswith(IMAGE_TOKEN + "\n"):
        raise _Bad(
            "conversations[0].value",
            f"must be {IMAGE_TOKEN!r}, a newline, then the policy prompt; got {_shown(human)}",
        )
    prompt = human.removeprefix(IMAGE_TOKEN).removeprefix("\n")
    answer = _answer(gpt)
    fields: dict[str, Any] = {
        "id": entry.get("id"),
        "image": entry.get("image"),
        "rating": answer.get("rating"),
        "category": answer.get("category"),
        "rationale": answer.get("rationale"),
        "policy": entry.get("policy"),
        "prompt": prompt or None,
        "augmented": entry.get("augmented"),
        SMOKE_TEST_KEY: entry.get(SMOKE_TEST_KEY, False),
    }
    problem = field_problem(fields)
    if problem is not None:
        field, reason = problem
        inside = "conversations[1]." if field in ("rating", "category", "rationale") else ""
        raise _Bad(inside + field, reason)
    return Sample(**fields)


_ROLES = ("human", "gpt")


def _turn(turn: Any, index: int, role: str) -> str:
    if not isinstance(turn, dict) or turn.get("from") != role:
        raise _Bad(f"conversations[{index}].from", f"must be {role!r}")
    value = turn.get("value")
    if not isinstance(value, str):
        raise _Bad(f"conversations[{index}].value", "must be a string")
    return value


def _answer(text: str) -> dict[str, Any]:
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Bad("conversations[1].value", f"not a JSON answer: {exc.msg}") from None
    if not isinstance(answer, dict):
        raise _Bad("conversations[1].value", "must be a JSON object")
    return answer


# -- writing -----------------------------------------------------------------------------------


def write_dataset(path: Path, samples: Sequence[Sample]) -> None:
    """Write `samples` to `path`: JSON Lines when it ends in `.jsonl`, else a JSON array.

    The file is replaced at once (written beside it, then renamed): a reader never sees half
    of it. ValueError when two samples share an id.
    """
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise ValueError(f"id {sample.id!r} is used twice")
        seen.add(sample.id)
    entries = [sample.to_entry() for sample in samples]
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
    else:
        text = json.dumps(entries, ensure_ascii=False, indent=1) + "\n"
    # Created like any new file (the umask applies), under a name no other writer picks.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("x", encoding="utf-8") as out:
            out.write(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
