"""The labelled manifest `dataset build` reads: one image per row, CSV or JSON Lines. Pure.

Columns (CSV header names, or JSON keys; names in any case):

    image      a path (relative to the manifest's folder) or s3://bucket/key     required
    rating     Safe or Unsafe, in any case                                       required
    category   a code (O1..O9, NA) in any case, a name, or the full string       required
    rationale  why the image earns its rating                                    optional
    id         the sample's id (default: made from the image reference)          optional

Other columns are read past (and named, so a misspelt one is noticed). A row that breaks a rule
is a `BadRow` with its line number; a file that cannot be read as a manifest at all is a
`ConfigError`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moderator.errors import ConfigError
from moderator.events.verdict import CATEGORIES, NONE_APPLYING, Rating, category_code, code_of
from moderator.training.dataset import S3_PREFIX, read_problem

REQUIRED = ("image", "rating", "category")
OPTIONAL = ("rationale", "id")
_FULL = {category_code(c): c for c in CATEGORIES}
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ManifestRow:
    """One valid row: the label as given, the category as its full taxonomy string."""

    line: int
    id: str
    image: str  # as written: a path or an s3:// URI
    rating: Rating
    category: str
    rationale: str | None


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be used, and why."""

    line: int
    image: str | None
    field: str
    reason: str

    def message(self, path: Path) -> str:
        return f"{path}:{self.line}: {self.field}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "image": self.image, "field": self.field, "reason": self.reason}


@dataclass(frozen=True)
class Manifest:
    rows: list[ManifestRow]
    bad: list[BadRow]
    ignored_columns: tuple[str, ...]  # present in the file, not a manifest column


def read_manifest(path: Path) -> Manifest:
    """Every row of a CSV or JSON Lines manifest (see `read_table`), checked, with duplicates
    (same id, same image reference) reported as bad rows."""
    raw, ignored = read_table(path, REQUIRED, OPTIONAL, what="MANIFEST")
    rows: list[ManifestRow] = []
    bad: list[BadRow] = []
    ids: dict[str, int] = {}
    images: dict[str, int] = {}
    for line, values in raw:
        row = values if isinstance(values, BadRow) else parse_row(line, values)
        if isinstance(row, ManifestRow):
            row = _unique(row, ids, images)
        if isinstance(row, ManifestRow):
            rows.append(row)
        else:
            bad.append(row)
    if not rows and not bad:
        raise ConfigError(f"MANIFEST: {path} has no rows")
    return Manifest(rows, bad, ignored)


Rows = list[tuple[int, dict[str, Any] | BadRow]]


def read_table(
    path: Path, required: tuple[str, ...], optional: tuple[str, ...], *, what: str
) -> tuple[Rows, tuple[str, ...]]:
    """(line, values by lower-case column name) per row of a CSV or JSON Lines file, or a
    BadRow for a row that is not one; and the columns present but not in `required` or
    `optional`. The format: `.csv`; `.jsonl`/`.ndjson`; otherwise a first character `{` means
    JSON Lines. ConfigError (prefixed with `what`) when the file cannot be read or its CSV
    header lacks a required column."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: cannot read {path}: {read_problem(exc)}") from exc
    suffix = path.suffix.lower()
    known = required + optional
    if suffix in (".jsonl", ".ndjson") or (suffix != ".csv" and text.lstrip().startswith("{")):
        rows = list(_jsonl(text))
        present = {k for _, values in rows if isinstance(values, dict) for k in values}
        return rows, tuple(sorted(present - set(known)))
    # strict: a quote never closed is an error, not a field that swallows the rest of the file
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        raise ConfigError(f"{what}: {path} is empty") from None
    except csv.Error as exc:
        raise ConfigError(f"{what}: {path}:1: not a CSV header: {exc}") from exc
    missing = [name for name in required if name not in header]
    if missing:
        raise ConfigError(
            f"{what}: {path}:1: the header lacks {', '.join(missing)} (columns: {', '.join(known)})"
        )
    doubled = sorted({name for name in header if header.count(name) > 1})
    if doubled:
        raise ConfigError(f"{what}: {path}:1: column {doubled[0]} appears twice")
    ignored = tuple(name for name in header if name not in known)
    return list(_csv_rows(reader, header)), ignored


def parse_row(line: int, values: Mapping[str, Any]) -> ManifestRow | BadRow:
    """One row's values (keys in lower case) checked and normalised."""
    image = values.get("image")
    shown_image = image if isinstance(image, str) else None

    def bad(field: str, reason: str) -> BadRow:
        return BadRow(line, shown_image, field, reason)

    for name in REQUIRED:
        value = values.get(name)
        if not isinstance(value, str) or not value.strip():
            return bad(name, "missing" if value in (None, "") else "must be text")
    assert isinstance(image, str)
    image = image.strip()
    if image.startswith(S3_PREFIX):
        bucket, _, key = image[len(S3_PREFIX) :].partition("/")
        if not bucket or not key:
            return bad("image", f"not an s3://bucket/key URI: {image!r}")
    rating = parse_rating(values["rating"])
    if rating is None:
        return bad("rating", f"must be Safe or Unsafe, got {values['rating']!r}")
    category = parse_category(values["category"])
    if category is None:
        codes = ", ".join(category_code(c) for c in CATEGORIES)
        return bad("category", f"unknown category {values['category']!r} (use {codes})")
    if rating == "Unsafe" and category == NONE_APPLYING:
        return bad("category", "an Unsafe image needs a category O1..O9, not NA")
    rationale = values.get("rationale")
    if rationale is not None and not isinstance(rationale, str):
        return bad("rationale", "must be text")
    sample_id = values.get("id")
    if sample_id is None or sample_id == "":
        sample_id = image_id(image)
    elif not isinstance(sample_id, str) or not sample_id.strip() or "\n" in sample_id:
        return bad("id", "must be one line of text")
    return ManifestRow(
        line=line,
        id=sample_id.strip(),
        image=image,
        rating=rating,
        category=category,
        rationale=(rationale.strip() or None) if rationale is not None else None,
    )


def parse_rating(value: str) -> Rating | None:
    """`safe`, `UNSAFE`... -> `Safe` / `Unsafe`; None for anything else."""
    ratings: dict[str, Rating] = {"safe": "Safe", "unsafe": "Unsafe"}
    return ratings.get(value.strip().lower())


def parse_category(value: str) -> str | None:
    """A code (`o4`, `NA`), a name (`nudity content`) or the full string -> the taxonomy's
    string; None when it names no category (or a code and a name that disagree)."""
    code = code_of(value)
    return None if code is None else _FULL[code]


def image_id(image: str) -> str:
    """A sample id made from an image reference: `photos/cat 1.jpg` -> `photos_cat_1`,
    `s3://b/acme/x.png` -> `b_acme_x`."""
    text = image.removeprefix(S3_PREFIX)
    stem, dot, suffix = text.rpartition(".")
    if dot and "/" not in suffix:
        text = stem
    return _ID_UNSAFE.sub("_", text).strip("_.") or "image"


def _unique(row: ManifestRow, ids: dict[str, int], images: dict[str, int]) -> ManifestRow | BadRow:
    if row.image in images:
        return BadRow(row.line, row.image, "image", f"same image as line {images[row.image]}")
    if row.id in ids:
        return BadRow(row.line, row.image, "id", f"{row.id!r} already used on line {ids[row.id]}")
    ids[row.id] = row.line
    images[row.image] = row.line
    return row


def _jsonl(text: str) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield line, BadRow(line, None, "row", f"not valid JSON: {exc.msg}")
            continue
        if not isinstance(value, dict):
            yield line, BadRow(line, None, "row", "must be a JSON object")
            continue
        yield line, {str(k).strip().lower(): v for k, v in value.items()}


def _csv_rows(reader: Any, header: list[str]) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
    end = reader.line_num
    while True:
        start = end + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            reason = f"not valid CSV: {exc}"
            if "unexpected end of data" in str(exc):
                reason = (
                    "not valid CSV: a quoted field that starts on this line is never closed "
                    "(the rows after it cannot be read)"
                )
            yield start, BadRow(start, None, "row", reason)
            return
        end = reader.line_num
        if not cells or all(not cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            reason = f"{len(cells)} fields, the header has {len(header)}"
            yield start, BadRow(start, None, "row", reason)
            continue
        yield start, dict(zip(header, cells, strict=True))
