"""Running `moderator dataset build`: settings, policy, manifest, image checks, files.

Everything that can be wrong with the input is checked before a file is written: the split, the
base policy, the manifest's header, then every row and every image. Bad rows are never dropped
silently: without `skip_bad` they are listed (`MANIFEST:LINE: field: reason`) and nothing is
written (exit 1); with it, they go to DIR/bad_rows.jsonl and the rest is built.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from moderator import __version__
from moderator.errors import ConfigError
from moderator.fetch.store import ObjectStore
from moderator.paths import directory_problem
from moderator.pipeline.progress import Counts
from moderator.policy.check import SURFACE_DEFAULT, check
from moderator.policy.compiled import TenantPolicy
from moderator.settings import Settings
from moderator.training.augment import Variants
from moderator.training.build import SPLITS, BuildOptions, Built, build_splits, summary
from moderator.training.dataset import S3_PREFIX, Sample, write_dataset
from moderator.training.images import CheckProgress, ImageChecker, ImageFacts, check_rows
from moderator.training.manifest import BadRow, Manifest, ManifestRow, read_manifest

BUILD_FILE = "build.json"
BAD_ROWS_FILE = "bad_rows.jsonl"
DEFAULT_MIN_SIDE = 32


@dataclass(frozen=True)
class BuildRequest:
    manifest: Path
    out: Path
    options: BuildOptions
    tenant: str = "default"
    skip_bad: bool = False
    min_side: int = DEFAULT_MIN_SIDE


def base_policy(settings: Settings, tenant: str) -> TenantPolicy:
    """The tenant's policy from policies.dir, compiled as the service compiles it (its default
    surface); ConfigError naming the problems when it does not compile."""
    result = check(settings.policies.dir, settings.tenancy)
    if tenant not in result.paths:
        raise ConfigError(f"--tenant: no policy file for {tenant} in {settings.policies.dir}")
    policy = result.policies.get((tenant, SURFACE_DEFAULT))
    if policy is None:
        problems = "; ".join(result.errors) or "it does not compile"
        raise ConfigError(f"--tenant: the policy of {tenant} has problems: {problems}")
    return policy


def run_build(
    request: BuildRequest,
    settings: Settings,
    *,
    s3: Callable[[], ObjectStore] | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Build the dataset; 0 when written, 1 when bad rows stopped it. `s3` builds the object
    store for s3:// images (default: S3ObjectStore with the `s3` settings); progress and
    problems go to `stderr` (default: sys.stderr)."""
    stderr = stderr or sys.stderr
    if request.min_side < 1:
        raise ConfigError(f"--min-side: must be at least 1, got {request.min_side}")
    check_out(request.out)
    policy = base_policy(settings, request.tenant)
    manifest = read_manifest(request.manifest)
    if manifest.ignored_columns:
        ignored = ", ".join(manifest.ignored_columns)
        print(f"moderator: warning: columns not used: {ignored}", file=stderr)
    checker = ImageChecker.for_settings(
        request.manifest.parent, settings, min_side=request.min_side, s3=s3
    )
    results = _checked(manifest, checker, settings.fetch.concurrency, stderr)
    good = [(row, r) for row, r in zip(manifest.rows, results, strict=True) if _ok(r)]
    bad = sorted(
        [*manifest.bad, *(r for r in results if isinstance(r, BadRow))], key=lambda b: b.line
    )
    if bad and not request.skip_bad:
        for row in bad:
            print(row.message(request.manifest), file=stderr)
        print(
            f"moderator: {len(bad)} bad row(s) in {request.manifest}; nothing written "
            "(fix them, or --skip-bad to build without them)",
            file=stderr,
        )
        return 1
    if not good:
        raise ConfigError(f"MANIFEST: {request.manifest} has no usable rows")
    try:
        request.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out: cannot create {request.out}: {exc.strerror or exc}") from exc
    samples = [_sample(row, request) for row, _ in good]
    built = build_splits(samples, Variants(policy, request.tenant), request.options)
    _write(request, built, bad, rows=len(manifest.rows) + len(manifest.bad))
    if bad:
        print(
            f"moderator: warning: {len(bad)} bad row(s) left out, listed in "
            f"{request.out / BAD_ROWS_FILE}",
            file=stderr,
        )
    empty = empty_splits(built)
    if empty:
        print(f"moderator: warning: {empty}", file=stderr)
    for line in summary_table(built):
        print(line)
    return 0


def check_out(out: Path) -> None:
    """ConfigError when --out cannot be a directory (checked before the rows)."""
    problem = directory_problem(out)
    if problem is not None:
        raise ConfigError(f"--out: {problem}")


def empty_splits(built: Built) -> str | None:
    """`the eval and test splits are empty: ...` when a split got no sample; else None."""
    names = [name for name in SPLITS if not built.splits[name]]
    if not names:
        return None
    files = ", ".join(f"{name}.json" for name in names)
    verb = "split is" if len(names) == 1 else "splits are"
    return (
        f"the {' and '.join(names)} {verb} empty ({files} written without samples): "
        "a larger --split share or more rows fills them"
    )


def summary_table(built: Built) -> list[str]:
    """split / samples / Safe / Unsafe / augmented, aligned."""
    rows: list[tuple[str, ...]] = [("split", "samples", "Safe", "Unsafe", "augmented")]
    for name in SPLITS:
        samples = built.splits[name]
        safe = sum(s.rating == "Safe" for s in samples)
        augmented = sum(s.augmented is not None for s in samples)
        cells = (len(samples), safe, len(samples) - safe, augmented)
        rows.append((name, *(str(n) for n in cells)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return [
        "  ".join([row[0].ljust(widths[0]), *(row[i].rjust(widths[i]) for i in range(1, 5))])
        for row in rows
    ]


def _checked(
    manifest: Manifest, checker: ImageChecker, workers: int, stderr: TextIO
) -> list[ImageFacts | BadRow]:
    """Every row's image checked, under a status line that counts the manifest's bad rows too."""
    progress = CheckProgress(stderr, "dataset build", found_bad=len(manifest.bad))
    total = len(manifest.rows)
    results = check_rows(
        manifest.rows,
        checker,
        workers=workers,
        progress=lambda done, bad: progress.tick(Counts(total, done, bad, 0), listing=False),
    )
    bad = sum(isinstance(r, BadRow) for r in results)
    progress.finish(Counts(total, total, bad, 0))
    return results


def _ok(result: ImageFacts | BadRow) -> bool:
    return isinstance(result, ImageFacts)


def _sample(row: ManifestRow, request: BuildRequest) -> Sample:
    """The row as a sample whose image is relative to DIR (where the splits are written)."""
    image = row.image
    if not image.startswith(S3_PREFIX):
        source = (request.manifest.parent / image).resolve()
        image = Path(os.path.relpath(source, request.out.resolve())).as_posix()
    return Sample(
        id=row.id, image=image, rating=row.rating, category=row.category, rationale=row.rationale
    )


def _write(request: BuildRequest, built: Built, bad: Sequence[BadRow], *, rows: int) -> None:
    try:
        for name in SPLITS:
            write_dataset(request.out / f"{name}.json", built.splits[name])
    except ValueError as exc:  # an augmented or copied id equal to an id of the manifest
        raise ConfigError(f"MANIFEST: {exc}: rename the sample in the manifest") from exc
    bad_path = request.out / BAD_ROWS_FILE
    if bad:
        lines = (json.dumps(b.to_json(), ensure_ascii=False) + "\n" for b in bad)
        bad_path.write_text("".join(lines), encoding="utf-8")
    else:
        bad_path.unlink(missing_ok=True)
    doc = summary(
        built,
        request.options,
        moderator_version=__version__,
        manifest=str(request.manifest),
        rows=rows,
        bad_rows=len(bad),
    )
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    (request.out / BUILD_FILE).write_text(text, encoding="utf-8")
