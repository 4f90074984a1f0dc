"""Writing a replay report to disk, and the short table the command line prints.

`write_report` renders every file in memory first, then writes each to a temporary file beside
its target and renames them into place: a crash leaves the previous report or the new one, never
half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from moderator.replay.compare import Pair
from moderator.replay.html import render_html
from moderator.replay.markdown import render_markdown
from moderator.replay.report import Report
from moderator.replay.tables import changed_in_order, changed_record
from moderator.words import counted

FILES = ("report.json", "changed.jsonl", "report.md", "report.html")


def write_report(report: Report, changed_pairs: Iterable[Pair], directory: Path) -> list[Path]:
    """Write report.json, changed.jsonl, report.md and report.html into `directory`.

    `changed_pairs` may hold every pair of the run: only changed ones are written, sorted by event
    id. Returns the paths written, in FILES order.
    """
    changed = changed_in_order(changed_pairs)
    contents = {
        "report.json": _json(report.to_json(), indent=2) + "\n",
        "changed.jsonl": "".join(_json(changed_record(p)) + "\n" for p in changed),
        "report.md": render_markdown(report, changed),
        "report.html": render_html(report, changed),
    }
    directory.mkdir(parents=True, exist_ok=True)
    return write_atomically(directory, {name: contents[name].encode() for name in FILES})


def write_atomically(directory: Path, files: Mapping[str, bytes]) -> list[Path]:
    """Write each file under `directory` by temporary file and rename; on any failure before the
    renames no temporary file is left and no target is touched."""
    staged: list[tuple[Path, Path]] = []
    try:
        for name, data in files.items():
            temp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
            # O_EXCL with 0o666: a fresh file, with the permissions the umask gives any report.
            handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            staged.append((temp, directory / name))
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
    except BaseException:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
        raise
    for temp, target in staged:
        temp.replace(target)
    _sync_directory(directory)
    return [target for _, target in staged]


def summary_table(report: Report) -> str:
    """A compact plain-text summary for the terminal: totals, transitions, tenants."""
    lines = [
        f"replay {report.run_id}: {counted(report.events, 'event')}, {report.changed} changed, "
        f"{counted(report.missing_objects, 'missing object')}, {report.no_original} without "
        "original",
        "",
    ]
    lines += _columns(
        ("transition", "events"),
        [(k, str(n)) for k, n in report.transitions.items()],
    )
    compared = sum(report.transitions.values())
    if compared != report.events:
        lines.append(
            f"({compared} of {report.events} compared: missing objects and events without an "
            "original have no transition)"
        )
    old, new = report.models.get("old", []), report.models.get("new", [])
    if old and new and set(old) != set(new):
        lines.append(
            f"model: {', '.join(old)} -> {', '.join(new)}: decisions may change with the model, "
            "not only the policies (--engine, --model)"
        )
    lines.append("")
    lines += _columns(
        ("tenant", "events", "changed", "missing", "no original"),
        [
            (k, str(v.events), str(v.changed), str(v.missing_objects), str(v.no_original))
            for k, v in report.by_tenant.items()
        ],
    )
    return "\n".join(lines)


def _columns(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Text left-aligned in the first column, numbers right-aligned in the others."""
    if not rows:
        return [f"{header[0]}: none"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])

    return [line(header), *(line(r) for r in rows)]


def _json(value: Any, indent: int | None = None) -> str:
    # default=str: header values the runner passes (paths, datetimes) are written as text.
    return json.dumps(value, sort_keys=True, indent=indent, ensure_ascii=False, default=str)


def _sync_directory(directory: Path) -> None:
    """Make the renames durable; some file systems cannot open a directory, which is harmless."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
