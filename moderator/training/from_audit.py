"""`moderator dataset from-audit`: audited decisions -> a dataset (production becomes eval data).

The rows come from the audit store, selected by the same filters as `audit query`
(moderator/audit/read/filters.py). Each becomes one sample: its image fetched from S3 by the
version the service judged (and checked against the recorded SHA-256, then decoded), written
once to DIR/images/<sha256>.<ext>; its label from a reviewer's labels file when it has a row
there, else from the recorded assessment; its prompt the one the service sent (the record's
policy document). A row that cannot become a sample is listed in DIR/skipped.jsonl with the
reason, never dropped silently.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moderator.audit.db.store import AuditStore
from moderator.audit.models import AuditQuery, AuditRow
from moderator.errors import ConfigError, ProcessingError
from moderator.events.verdict import NONE_APPLYING, Rating
from moderator.fetch.decode import DecodeLimits, decode_image
from moderator.fetch.store import ObjectStore
from moderator.pipeline.progress import Counts, Progress
from moderator.training.dataset import Sample, write_dataset
from moderator.training.images import CHECK_SIZE
from moderator.training.manifest import BadRow, parse_category, parse_rating, read_table

DATASET_FILE = "dataset.json"
EXPORT_FILE = "export.json"
SKIPPED_FILE = "skipped.jsonl"
IMAGES = "images"
SCHEMA = "moderator.dataset-export/v1"
PAGE = 500
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp"}


@dataclass(frozen=True)
class Label:
    """A reviewer's label for one event."""

    rating: Rating
    category: str
    rationale: str | None


@dataclass(frozen=True)
class Skip:
    event_id: str
    reason: str


@dataclass(frozen=True)
class ExportOptions:
    labels: Mapping[str, Label] | None = None
    labelled_only: bool = False
    max_samples: int | None = None


def read_labels(path: Path) -> dict[str, Label]:
    """A reviewer labels file (CSV or JSON Lines: event_id, rating, category, optional
    rationale) by event id; ConfigError naming the line of the first bad row."""
    rows, _ = read_table(path, ("event_id", "rating", "category"), ("rationale",), what="--labels")
    labels: dict[str, Label] = {}
    for line, values in rows:
        if isinstance(values, BadRow):
            raise ConfigError(f"--labels: {values.message(path)}")
        event_id = str(values.get("event_id") or "").strip()
        rating = parse_rating(str(values.get("rating") or ""))
        category = parse_category(str(values.get("category") or ""))
        where = f"--labels: {path}:{line}"
        if not event_id:
            raise ConfigError(f"{where}: event_id: missing")
        if rating is None or category is None:
            field = "rating" if rating is None else "category"
            raise ConfigError(f"{where}: {field}: not understood: {values.get(field)!r}")
        if rating == "Unsafe" and category == NONE_APPLYING:
            raise ConfigError(f"{where}: category: an Unsafe label needs a category O1..O9")
        if event_id in labels:
            raise ConfigError(f"{where}: event_id: {event_id} is labelled twice")
        rationale = values.get("rationale")
        text = rationale.strip() if isinstance(rationale, str) else ""
        labels[event_id] = Label(rating, category, text or None)
    return labels


@dataclass
class Exported:
    samples: list[Sample] = dataclasses.field(default_factory=list)
    skipped: list[Skip] = dataclasses.field(default_factory=list)
    rows: int = 0  # audit rows read
    unlabelled: int = 0  # rows left out by labelled_only
    labelled: int = 0  # samples labelled by a reviewer


class Exporter:
    """Turns audit rows into samples, writing their images under `out`/images."""

    def __init__(
        self, out: Path, objects: ObjectStore, *, limits: DecodeLimits, max_bytes: int
    ) -> None:
        self._out = out
        self._objects = objects
        self._limits = limits
        self._max_bytes = max_bytes

    def sample(self, row: AuditRow, label: Label | None) -> Sample | Skip:
        """One row as a sample, or why it cannot be one."""
        if row.record is None or row.object_key is None or row.object_bucket is None:
            return Skip(row.event_id, "redacted: the record and object key were removed")
        verdict = row.record.get("verdict") or {}
        chosen = label or self._assessment(verdict, row)
        if isinstance(chosen, Skip):
            return chosen
        version = (verdict.get("object") or {}).get("version_id")
        try:
            fetched = self._objects.get(row.object_bucket, row.object_key, version, self._max_bytes)
            decoded = decode_image(fetched.data, self._limits, CHECK_SIZE)
        except ProcessingError as exc:
            return Skip(row.event_id, f"image: {exc.code.value}: {exc.message}")
        if row.sha256 and decoded.sha256 != row.sha256:
            return Skip(row.event_id, "image: the object's bytes differ from the ones judged")
        name = f"{decoded.sha256}{EXTENSIONS.get(decoded.format, '.img')}"
        path = self._out / IMAGES / name
        if not path.is_file() or path.stat().st_size != len(fetched.data):
            tmp = path.with_name(f".{name}.{row.id}.tmp")
            tmp.write_bytes(fetched.data)
            tmp.replace(path)
        document = row.record.get("policy_document") or {}
        prompt = document.get("prompt") if isinstance(document, dict) else None
        return Sample(
            id=row.event_id,
            image=f"{IMAGES}/{name}",
            rating=chosen.rating,
            category=chosen.category,
            rationale=chosen.rationale,
            policy=f"{row.tenant_id}@{row.policy_version}" if row.policy_version else row.tenant_id,
            prompt=prompt if isinstance(prompt, str) and prompt else None,
        )

    @staticmethod
    def _assessment(verdict: Mapping[str, Any], row: AuditRow) -> Label | Skip:
        assessment = verdict.get("assessment")
        if not isinstance(assessment, dict):
            error = (verdict.get("error") or {}).get("code") or "none"
            return Skip(row.event_id, f"no assessment (error {error}) and no reviewer label")
        if row.model_smoke_test:
            return Skip(row.event_id, "a smoke-test model's answer and no reviewer label")
        rating = assessment.get("rating")
        category = parse_category(str(assessment.get("category") or ""))
        if rating not in ("Safe", "Unsafe") or category is None:
            return Skip(row.event_id, "the assessment has no taxonomy rating and category")
        if rating == "Unsafe" and category == NONE_APPLYING:
            return Skip(row.event_id, "Unsafe without a category (NA) and no reviewer label")
        rationale = assessment.get("rationale")
        text = rationale.strip() if isinstance(rationale, str) else ""
        return Label("Safe" if rating == "Safe" else "Unsafe", category, text or None)


def export(
    rows: Iterator[AuditRow],
    exporter: Exporter,
    options: ExportOptions,
    *,
    workers: int,
    progress: Callable[[Exported], None] | None = None,
) -> Exported:
    """Samples from `rows`, read a page at a time, images fetched on `workers` threads; stops
    after `options.max_samples` samples."""
    result = Exported()
    labels = options.labels or {}
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="export") as pool:
        for page in _chunks(rows, PAGE):
            wanted: list[tuple[AuditRow, Label | None]] = []
            for row in page:
                result.rows += 1
                label = labels.get(row.event_id)
                if label is None and options.labelled_only:
                    result.unlabelled += 1
                else:
                    wanted.append((row, label))
            for (row, label), made in zip(
                wanted, pool.map(lambda item: exporter.sample(*item), wanted), strict=True
            ):
                if isinstance(made, Skip):
                    result.skipped.append(made)
                elif options.max_samples is None or len(result.samples) < options.max_samples:
                    result.samples.append(_labelled(made, label, row))
                    result.labelled += label is not None
            if progress is not None:
                progress(result)
            if options.max_samples is not None and len(result.samples) >= options.max_samples:
                break
    return result


def _labelled(sample: Sample, label: Label | None, row: AuditRow) -> Sample:
    """A reviewer's label keeps the recorded rationale only when it agrees with the model, and
    never a smoke-test model's (meaningless text, whatever the label)."""
    if label is None or label.rationale is not None or row.model_smoke_test:
        return sample
    agrees = (row.rating, row.category) == (label.rating, label.category)
    recorded = (((row.record or {}).get("verdict") or {}).get("assessment") or {}).get("rationale")
    if agrees and isinstance(recorded, str) and recorded.strip():
        return dataclasses.replace(sample, rationale=recorded.strip())
    return sample


def query_rows(store: AuditStore, query: AuditQuery) -> Iterator[AuditRow]:
    """Every row matching `query`, page after page (as `audit query --all`)."""
    query = dataclasses.replace(query, limit=PAGE, cursor=None)
    while True:
        page = store.query(query)
        yield from page.rows
        if page.next_cursor is None:
            return
        query = dataclasses.replace(query, cursor=page.next_cursor)


def skip_kind(reason: str) -> str:
    """A skip reason without its details: `image: fetch_failed` for an image that could not be
    read, `no assessment and no reviewer label` whatever the error, else the reason itself."""
    head, _, rest = reason.partition(": ")
    code = rest.partition(": ")[0]
    if head == "image" and re.fullmatch(r"[a-z_]+", code):
        return f"image: {code}"
    return re.sub(r" \(error [^)]*\)", "", reason)


def skip_kinds(skipped: Sequence[Skip]) -> Counter[str]:
    """Skipped rows by kind of reason (skip_kind)."""
    return Counter(skip_kind(s.reason) for s in skipped)


def skipped_line(skipped: Sequence[Skip], where: Path) -> str:
    """`9 row(s) skipped, listed in DIR/skipped.jsonl: 7 image: fetch_failed; 2 ...`."""
    kinds = "; ".join(f"{n} {kind}" for kind, n in skip_kinds(skipped).most_common())
    return f"{len(skipped)} row(s) skipped, listed in {where}: {kinds}"


def write_export(out: Path, result: Exported, query: AuditQuery, options: ExportOptions) -> None:
    """DIR/dataset.json, DIR/skipped.jsonl (when rows were skipped) and DIR/export.json."""
    write_dataset(out / DATASET_FILE, result.samples)
    skipped = out / SKIPPED_FILE
    if result.skipped:
        lines = (
            json.dumps({"event_id": s.event_id, "reason": s.reason}, ensure_ascii=False) + "\n"
            for s in result.skipped
        )
        skipped.write_text("".join(lines), encoding="utf-8")
    else:
        skipped.unlink(missing_ok=True)
    reasons = skip_kinds(result.skipped)
    doc = {
        "schema": SCHEMA,
        "filters": {
            k: (v.isoformat() if hasattr(v, "isoformat") else v)
            for k, v in dataclasses.asdict(query).items()
            if v is not None and k not in ("sort", "limit", "cursor", "tenant_ids")
        },
        "labels": len(options.labels or {}),
        "labelled_only": options.labelled_only,
        "rows_read": result.rows,
        "samples": len(result.samples),
        "labelled_samples": result.labelled,
        "unlabelled_rows": result.unlabelled,
        "skipped": len(result.skipped),
        "skipped_by_reason": dict(sorted(reasons.items())),
        "rating": dict(sorted(Counter(s.rating for s in result.samples).items())),
        "category": dict(sorted(Counter(s.category for s in result.samples).items())),
    }
    (out / EXPORT_FILE).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


class ExportProgress(Progress):
    """`dataset from-audit: rows 1500, exported 1432, skipped 68, 120.5 rows/s`; with
    `unlabelled 5` after the skipped rows when --labelled-only left rows out."""

    unlabelled = 0  # rows left out by labelled_only, set before each line

    def _status(self, counts: Counts, now: float, *, listing: bool) -> str:
        rate = counts.total / max(now - self._started, 1e-9)
        unlabelled = f", unlabelled {self.unlabelled}" if self.unlabelled else ""
        return (
            f"dataset from-audit: rows {counts.total}, exported {counts.done}, "
            f"skipped {counts.errors}{unlabelled}, {rate:.1f} rows/s"
        )


def progress_line(progress: ExportProgress) -> Callable[[Exported], None]:
    def show(result: Exported) -> None:
        progress.unlabelled = result.unlabelled
        progress.tick(_counts(result), listing=True)

    return show


def finish_line(progress: ExportProgress, result: Exported) -> None:
    progress.unlabelled = result.unlabelled
    progress.finish(_counts(result))


def _counts(result: Exported) -> Counts:
    return Counts(result.rows, len(result.samples), len(result.skipped), 0)


def _chunks(rows: Iterator[AuditRow], size: int) -> Iterator[list[AuditRow]]:
    page: list[AuditRow] = []
    for row in rows:
        page.append(row)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page
