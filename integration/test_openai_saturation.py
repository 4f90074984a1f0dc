"""bench/saturation.py --quick on the embedded broker against the simulated batching server: each
variant ran to completion with no verdict lost or duplicated and the table shows every figure;
and the simulated server in its own process (SimulatorProcess) serves and reports.

The figures of a quick run mean little (a few hundred events, ramp-up and drain weigh on them);
only what no run may miss is checked: per-item dispatch beats one request at a time by far.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from moderator.dev.openai.simulator import BatchingModel, SimulatorProcess
from moderator.engine.base import EngineRequest
from moderator.engine.openai.request import ChatFormat
from moderator.events.verdict import CATEGORIES
from moderator.settings import GenerationSettings, OpenAISettings

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "saturation.py"
# Two variants only: each run joins a consumer group first, 3 s on the mock broker.
VARIANTS = {"naive: one request at a time": "naive", "per item, adaptive up to 64": "adaptive"}
COLUMNS = (
    "events", "occupancy", "items/s", "x ceiling", "steady occ.", "steady x ceil.", "queue",
    "x naive", "ev/s", "lost", "dup", "errors", "retries", "p50 ms", "p95 ms", "limit",
    "server cores", "client cores",
)  # fmt: skip


def _table(stdout: str) -> dict[str, dict[str, str]]:
    """The summary table's rows by label, as {column: cell}."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("summary:"))
    header = re.split(r"\s{2,}", lines[start + 1].strip())
    assert tuple(header[1:]) == COLUMNS, header
    rows: dict[str, dict[str, str]] = {}
    for line in lines[start + 3 :]:
        if not line.startswith("  ") or line.startswith("  note"):
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = dict(zip(COLUMNS, cells[1:], strict=True))
    return rows


def test_quick_run_prints_every_variant() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--variants", ",".join(VARIANTS.values())],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    rows = _table(result.stdout)
    assert set(rows) == set(VARIANTS), result.stdout
    for label, row in rows.items():
        assert row["lost"] == "0" and row["dup"] == "0", f"{label}: {row}"
        assert re.fullmatch(r"\d+\.\d%", row["occupancy"]), row
        assert re.fullmatch(r"\d+\.\d{3}", row["x ceiling"]), row
    naive = float(rows["naive: one request at a time"]["x ceiling"])
    adaptive = float(rows["per item, adaptive up to 64"]["x ceiling"])
    assert adaptive > 4 * naive, result.stdout
    assert "ceiling 94.7 items/s" in result.stdout
    ends = re.findall(r"start, to the 10% verdict: \d+\.\d% over [\d.]+ s; drain", result.stdout)
    assert len(ends) == len(VARIANTS), result.stdout


def test_simulator_process_serves_and_reports() -> None:
    request = EngineRequest("r", Image.new("RGB", (8, 8)), "p", CATEGORIES)
    body = ChatFormat("sim-guard", GenerationSettings(), OpenAISettings(), source="t").encode(
        request
    )
    assert isinstance(body, bytes)
    sim = SimulatorProcess(BatchingModel(slots=2, alpha_s=0.02, beta_s=0.0))
    with sim:
        sim.reset()
        for _ in range(3):
            response = httpx.post(f"{sim.url}/chat/completions", content=body, timeout=10)
            assert response.status_code == 200
            assert "Simulated." in response.json()["choices"][0]["message"]["content"]
        stats = sim.stats()
    assert stats.served == 3 and stats.slots == 2
    assert stats.wall_s > 0 and stats.cpu_s >= 0
    assert 0 < stats.occupancy <= 0.5  # one request at a time on two slots
    with pytest.raises(RuntimeError, match="not running"):
        sim.stats()
