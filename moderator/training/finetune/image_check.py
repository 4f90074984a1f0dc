"""Every image of the splits a run uses, read and decoded before the model is loaded.

A training step reads its samples' images when it draws them, so an image that cannot be read
or decoded would otherwise stop a run in the middle, after minutes or hours of steps. The
images are checked the way `moderator dataset build` checks a manifest's (training/images.py
`ImageChecker`: the service's reader and decoder, under the `fetch` limits), and all the bad
ones are named in one ConfigError (exit 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from moderator.errors import ConfigError, ProcessingError
from moderator.fetch.store import ObjectStore
from moderator.settings import Settings
from moderator.training.dataset import Sample
from moderator.training.images import ImageChecker
from moderator.training.predictions import MAX_LISTED, missing_images, not_found

Split = tuple[Path, Sequence[Sample]]
"""A split file and its samples (image paths are relative to the file's folder)."""


def check_split_images(
    splits: Sequence[Split], settings: Settings, *, s3: Callable[[], ObjectStore] | None = None
) -> None:
    """ConfigError (one line) when an image of `splits` is missing, or cannot be read or
    decoded: every such image is counted, the first few are named."""
    missing = [m for split, samples in splits for m in missing_images(split, samples)]
    if missing:
        raise ConfigError(f"dataset: {not_found(missing)}")
    bad: list[str] = []
    for split, samples in splits:
        checker = ImageChecker.for_settings(split.parent, settings, min_side=1, s3=s3)
        bad += [f"{split.name} {problem}" for problem in unusable(samples, checker, settings)]
    if bad:
        shown = "; ".join(bad[:MAX_LISTED])
        more = f" (+{len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
        raise ConfigError(
            f"dataset: {len(bad)} image(s) cannot be used: {shown}{more}; fix or remove "
            "those samples (`moderator dataset build` refuses such images)"
        )


def unusable(samples: Sequence[Sample], checker: ImageChecker, settings: Settings) -> list[str]:
    """`sample 'ID' (IMAGE): code: reason` for each sample whose image cannot be used, in
    sample order."""

    def one(sample: Sample) -> str | None:
        try:
            checker.check(sample.image)
        except ProcessingError as exc:
            return f"sample {sample.id!r} ({sample.image}): {exc.code.value}: {exc.message}"
        return None

    workers = max(1, settings.fetch.concurrency)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-check") as pool:
        return [problem for problem in pool.map(one, samples) if problem is not None]
