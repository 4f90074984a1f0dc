"""The CPU benches run end to end on a few events and print every figure they promise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_event_cost_prints_each_step_and_the_total() -> None:
    out = run_bench("event_cost.py", "--events", "8")
    for step in ("parse message", "decode", "classify (fake)", "serialise records", "total"):
        assert re.search(rf"^  {re.escape(step)} +\d+\.\d( |$)", out, re.M), (step, out)


def test_hand_offs_prints_every_way_with_its_ratio_to_the_least_work() -> None:
    out = run_bench("hand_offs.py", "--events", "12", "--chunk", "4")
    rows = re.findall(r"^  (.+?) +([\d,]+) +([\d,]+) +(\d+\.\d\d)$", out, re.M)
    names = [name.strip() for name, *_ in rows]
    assert names == [
        "least work (plain Python, one thread)",
        "the service's steps, one thread",
        "the same steps, two threads, chunks of 4",
        "the processor (fetch pool, engine window)",
        "the processor, configured like way 3",
    ]
    assert rows[0][3] == "1.00"
    assert all(float(ratio) > 0 for *_, ratio in rows)


def test_metrics_cost_compares_each_call_with_the_sdk() -> None:
    out = run_bench("metrics_cost.py", "--calls", "200")
    rows = re.findall(r"^  (.+?) +(\d+\.\d\d) +(\d+\.\d\d) +(\d+\.\d\d)$", out, re.M)
    assert [r[0].strip() for r in rows] == [
        "histogram, 1 label",
        "counter, 3 labels",
        "counter, 1 label",
    ]
