"""bench/brokers.py --quick against the session's Apache Kafka broker: the table has every row.

The figures of a quick run mean little (a few hundred events, one repeat); what is checked is
that every variant ran to completion on both brokers and that every row and ratio is printed,
exactly-once marked n/a on the mock broker with its reason.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moderator.dev.kafka.cluster import ApacheKafka

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "brokers.py"
RATE = re.compile(r"^\d[\d,]* ev/s$")
RATIO = re.compile(r"^\d+(\.\d+)?$")
NA = "n/a (mock)"

# row label → (embedded cell, real cell, real ÷ embedded cell); None: no such cell.
EXPECTED: dict[str, tuple[re.Pattern[str] | str, re.Pattern[str], re.Pattern[str] | str | None]] = {
    "bare loop, exactly_once": (NA, RATE, NA),
    "bare loop, at_least_once": (RATE, RATE, RATIO),
    "pipeline, exactly_once": (NA, RATE, NA),
    "pipeline, at_least_once": (RATE, RATE, RATIO),
    "pipeline ÷ bare loop, exactly_once": (NA, RATIO, None),
    "pipeline ÷ bare loop, at_least_once": (RATIO, RATIO, None),
    "exactly_once ÷ at_least_once, bare loop": (NA, RATIO, None),
    "exactly_once ÷ at_least_once, pipeline": (NA, RATIO, None),
}


def _table(stdout: str) -> dict[str, list[str]]:
    """The summary table's rows by label, cells split on runs of two or more spaces."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("summary:"))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells[1:]
    return rows


def _matches(cell: str, expected: re.Pattern[str] | str) -> bool:
    return cell == expected if isinstance(expected, str) else bool(expected.match(cell))


def test_quick_run_prints_every_row(apache_kafka: ApacheKafka) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--bootstrap-servers",
            apache_kafka.bootstrap_servers,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    rows = _table(result.stdout)
    for label, cells in EXPECTED.items():
        assert label in rows, f"row {label!r} missing from:\n{result.stdout}"
        wanted = [c for c in cells if c is not None]
        assert len(rows[label]) == len(wanted), f"{label}: {rows[label]}"
        for cell, expected in zip(rows[label], wanted, strict=True):
            assert _matches(cell, expected), f"{label}: {cell!r} is not {expected}"
    assert f"{NA}: librdkafka's mock cluster cannot do exactly-once" in result.stdout
