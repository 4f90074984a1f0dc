"""Checking a manifest's images with the service's own reader and decoder.

Each image is read like the service reads an upload (a local file, or an S3 object with the
`s3` settings), bounded by `fetch.max_object_bytes`, and decoded by `decode_image` under the
`fetch` limits (formats, pixels, frames, CPU time). It must also be at least `min_side` pixels
on its shorter side. Images with the same content (SHA-256) as an earlier row are refused too:
one image in two splits would leak evaluation data into training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from moderator.errors import ProcessingError
from moderator.fetch.decode import DecodeLimits, decode_image
from moderator.fetch.local import LOCAL_BUCKET, LocalFileStore
from moderator.fetch.store import ObjectStore
from moderator.pipeline.progress import Counts, Progress
from moderator.training.dataset import S3_PREFIX
from moderator.training.manifest import BadRow, ManifestRow

if TYPE_CHECKING:
    from moderator.settings import Settings

CHECK_SIZE = 256
"""Longest side the check decodes to (JPEG decodes at a reduced scale): the header, every byte
and the frames are still read, at a fraction of a full decode's cost."""


@dataclass(frozen=True)
class ImageFacts:
    sha256: str
    format: str
    width: int
    height: int


class ImageChecker:
    """Reads and decodes one image reference (a path relative to `base`, or s3://bucket/key).

    `s3` builds the S3 store, on first use: a manifest of local files needs no S3 client."""

    def __init__(
        self,
        base: Path,
        *,
        limits: DecodeLimits,
        max_bytes: int,
        min_side: int,
        s3: Callable[[], ObjectStore],
    ) -> None:
        self._base = base
        self._limits = limits
        self._max_bytes = max_bytes
        self._min_side = min_side
        self._s3_factory = s3
        self._s3: ObjectStore | None = None
        self._local = LocalFileStore()

    @classmethod
    def for_settings(
        cls,
        base: Path,
        settings: Settings,
        *,
        min_side: int,
        s3: Callable[[], ObjectStore] | None = None,
    ) -> ImageChecker:
        """A checker under the `fetch` limits of `settings`; S3 images through `s3` (default:
        an S3ObjectStore with the `s3` settings)."""

        def s3_store() -> ObjectStore:
            from moderator.fetch.s3 import S3ObjectStore

            return S3ObjectStore(settings.s3)

        return cls(
            base,
            limits=DecodeLimits.from_settings(settings.fetch),
            max_bytes=settings.fetch.max_object_bytes,
            min_side=min_side,
            s3=s3 or s3_store,
        )

    def read(self, image: str) -> bytes:
        """The image's bytes; ProcessingError when it cannot be read."""
        if image.startswith(S3_PREFIX):
            bucket, _, key = image[len(S3_PREFIX) :].partition("/")
            return self._store().get(bucket, key, None, self._max_bytes).data
        path = self._base / image
        return self._local.get(LOCAL_BUCKET, str(path), None, self._max_bytes).data

    def check(self, image: str) -> ImageFacts:
        """Read and decode; ProcessingError (its code and message) when the image is unusable,
        ValueError when it is smaller than `min_side`."""
        decoded = decode_image(self.read(image), self._limits, CHECK_SIZE)
        if min(decoded.width, decoded.height) < self._min_side:
            raise ValueError(
                f"{decoded.width}x{decoded.height} pixels: the shorter side is under "
                f"{self._min_side} (--min-side)"
            )
        return ImageFacts(decoded.sha256, decoded.format, decoded.width, decoded.height)

    def _store(self) -> ObjectStore:
        if self._s3 is None:
            self._s3 = self._s3_factory()
        return self._s3


def check_rows(
    rows: Sequence[ManifestRow],
    checker: ImageChecker,
    *,
    workers: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[ImageFacts | BadRow]:
    """One result per row, in row order: the image's facts, or a BadRow saying why it cannot
    be used. `progress(done, bad)` is called after each image."""

    def one(row: ManifestRow) -> ImageFacts | BadRow:
        try:
            return checker.check(row.image)
        except ProcessingError as exc:
            return BadRow(row.line, row.image, "image", f"{exc.code.value}: {exc.message}")
        except ValueError as exc:
            return BadRow(row.line, row.image, "image", str(exc))

    results: list[ImageFacts | BadRow] = []
    bad = 0
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="check") as pool:
        for result in pool.map(one, rows):
            bad += isinstance(result, BadRow)
            results.append(result)
            if progress is not None:
                progress(len(results), bad)
    return _unique_content(rows, results)


def _unique_content(
    rows: Sequence[ManifestRow], results: list[ImageFacts | BadRow]
) -> list[ImageFacts | BadRow]:
    first: dict[str, int] = {}
    out: list[ImageFacts | BadRow] = []
    for row, result in zip(rows, results, strict=True):
        if isinstance(result, ImageFacts):
            if result.sha256 in first:
                reason = (
                    f"same content as line {first[result.sha256]} (SHA-256 {result.sha256[:12]})"
                )
                result = BadRow(row.line, row.image, "image", reason)
            else:
                first[result.sha256] = row.line
        out.append(result)
    return out


class CheckProgress(Progress):
    """The scan's status line (moderator/pipeline/progress.py) for the image checks, in rows:
    `dataset build: checked 120/500 rows, bad 2, 41.3 images/s`.

    `Counts` counts the images checked; `found_bad` rows were already found bad while the
    manifest was read (they have no image to check) and count as checked and bad from the
    start, so that the final `bad` is the number of bad rows listed after it."""

    def __init__(self, stream: TextIO, label: str, *, found_bad: int = 0) -> None:
        super().__init__(stream)
        self._label = label
        self._found_bad = found_bad

    def _status(self, counts: Counts, now: float, *, listing: bool) -> str:
        rate = counts.done / max(now - self._started, 1e-9)
        found = self._found_bad
        return (
            f"{self._label}: checked {counts.done + found}/{counts.total + found} rows, "
            f"bad {counts.errors + found}, {rate:.1f} images/s"
        )
