"""report.html in a real browser: Debian's chromium, headless, renders both charts and the tables.

Without chromium the test skips with the reason locally and fails with CI=true (.ci/chromium.sh
installs it), so a CI machine that lost the browser cannot pass by skipping.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, NoReturn

import pytest

from moderator.replay.compare import Pair, pair_of
from moderator.replay.render import write_report
from moderator.replay.report import build_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIMEOUT_S = 60
# Hand-counted: (original decision, replayed decision) -> events.
EXPECTED = {
    ("allow", "allow"): 3,
    ("allow", "block"): 2,
    ("review", "allow"): 1,
    ("block", "block"): 1,
}


def chromium_unavailable(reason: str) -> NoReturn:
    """Skip (locally) or fail (CI=true) because the browser cannot run here."""
    message = f"chromium unavailable: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI installs it with .ci/chromium.sh)", pytrace=False)
    pytest.skip(f"{message} (apt-get install chromium, or bash .ci/chromium.sh)")


def _verdict(event_id: str, decision: str, score: float, version: str) -> dict[str, Any]:
    category = "NA: None applying" if decision == "allow" else "O4: Nudity Content"
    return {
        "event_id": event_id,
        "tenant_id": "shop",
        "object": {"bucket": "shop-uploads", "key": f"img/{event_id}.jpg"},
        "decision": decision,
        "assessment": {"rating": "Safe", "category": category, "score": score},
        "policy": {"tenant_id": "shop", "surface": "default", "version": version},
        "model": {"engine": "guard", "name": "llama-guard", "revision": "r1"},
        "replay": {"run_id": "browser", "original_decision": None, "path": "engine"},
        "error": None,
        "decided_at": datetime(2026, 12, 1, tzinfo=UTC).isoformat(),
        "trace_id": "0" * 32,
    }


def _pairs() -> list[Pair]:
    pairs = []
    for (old, new), count in EXPECTED.items():
        for i in range(count):
            event_id = f"{old}-{new}-{i}"
            old_score, new_score = 0.1 + 0.1 * i, 0.2 + 0.25 * i
            pairs.append(
                pair_of(
                    _verdict(event_id, old, old_score, "v1"),
                    _verdict(event_id, new, new_score, "v2"),
                )
            )
    return pairs


class _Page(HTMLParser):
    """The parts of the dumped DOM the test reads: images by id and each table's cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "img" and found.get("id"):
            self.images[str(found["id"])] = found.get("src") or ""
        elif tag == "table":
            self._table = found.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table is not None and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    if binary is None:
        chromium_unavailable("no chromium on PATH")
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu"]
    command += [f"--user-data-dir={tmp_path / 'profile'}", "--no-first-run", *args]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium took over {TIMEOUT_S} s: {' '.join(command)}", pytrace=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_report_html_renders_in_chromium(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the charts need the replay extra")
    pairs = _pairs()
    header = {"policies": "policies-next", "policy_diff": ["shop/default: O4 action changed"]}
    report = build_report(pairs, run_id="browser", header=header)
    write_report(report, pairs, tmp_path / "report")
    url = (tmp_path / "report" / "report.html").as_uri()

    dom = _chromium(tmp_path, "--dump-dom", url).stdout
    page = _Page()
    page.feed(dom)
    for chart in ("transitions-chart", "score-shift-chart"):
        src = page.images.get(chart, "")
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), f"{chart}: {src[:80]!r}"
        png = base64.b64decode(src[len(prefix) :], validate=True)
        assert png.startswith(PNG_SIGNATURE) and len(png) > 1024, chart
    header_row, *rows = page.tables["transitions"]
    assert header_row == ["Original", "Replayed", "Events"]
    assert {(old, new): int(n) for old, new, n in rows} == EXPECTED
    changed = sum(n for (old, new), n in EXPECTED.items() if old != new)
    assert ["changed", str(changed)] in page.tables["totals"]

    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", url)
    data = shot.read_bytes()
    # A blank page of this size is about 13 KB; the report with its charts is several times that.
    assert data.startswith(PNG_SIGNATURE) and len(data) > 50_000
