"""Where the pipeline's time goes, from a py-spy profile of bench/pipeline.py.

Record a profile of the in-memory pipeline run, then summarise it:

    .venv/bin/py-spy record --gil --format raw -r 250 -o profile.txt -- \\
        .venv/bin/python bench/pipeline.py --no-s3 --decode-images 0 --events 8000
    .venv/bin/python bench/profile_summary.py profile.txt

`--gil` keeps only samples of the thread holding the GIL: in one process that is the Python
work the pipeline can do at most per second. The summary counts the samples of the service's
threads (fetch pool, engine window, the consume loop); the bench's own set-up (image generation,
publishing, the bare loop, the verdict reader) and the embedded S3 server are left out. Each
sample goes to one category: a sample inside a wait or a hand-off between threads (a lock, a
condition, a queue, a future) to "thread hand-offs"; any other to the category of the
innermost frame that names one; the rest to "other pipeline work".
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("decode (Pillow, limits)", ("decode_image",)),
    ("fake engine", ("FakeEngine.classify",)),
    (
        "policy version, hash, document",
        ("TenantPolicy.full_hash", "TenantPolicy._document", "TenantPolicy.prompt_sha256"),
    ),
    ("verdict and audit records (pydantic)", ("assemble (moderator",)),
    ("serialising records, headers", ("verdict_outputs",)),
    ("event parsing", ("parse_message",)),
    ("publish span", ("publish_span",)),
    (
        "spans",
        ("EventTelemetry.__init__", "EventTelemetry.stage", "EventTelemetry._record"),
    ),
    ("metrics", ("Metrics.add", "Metrics.record", "Metrics.set")),
    ("checkpoint: produce, flush, commit", ("commit_checkpoint",)),
    ("log context", ("bound_contextvars", "bind_contextvars", "unbind_contextvars")),
)
HAND_OFFS = ("threading.py", "concurrent/futures", "queue.py", "_work_loop", "_dispatch_loop")
LEFT_OUT = (
    "_make_images",
    "_publish_events",
    "run_ceiling",
    "run_pipeline (",
    "werkzeug",
    "socketserver",
    "_find_and_load",
    "EmbeddedStack",
)


def summarise(lines: Sequence[str]) -> tuple[int, Counter[str]]:
    """Samples of the service's threads, and their count by category."""
    found: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit() or any(skip in stack for skip in LEFT_OUT):
            continue
        frames = stack.split(";")
        if not any("Thread.run" in frame for frame in frames):
            continue
        total += int(count)
        found[_category(frames)] += int(count)
    return total, found


def _category(frames: Sequence[str]) -> str:
    if any(mark in frames[-1] for mark in HAND_OFFS):
        return "thread hand-offs (locks, conditions, queues, futures)"
    for frame in reversed(frames):
        for name, marks in CATEGORIES:
            if any(mark in frame for mark in marks):
                return name
    return "other pipeline work"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("profile", type=Path, help="py-spy record --format raw output")
    args = parser.parse_args(argv)
    total, found = summarise(args.profile.read_text(encoding="utf-8").splitlines())
    if not total:
        print("no samples of the service's threads in the profile", file=sys.stderr)
        return 1
    print(f"{total} samples of the service's threads")
    for name, count in found.most_common():
        print(f"  {100 * count / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
