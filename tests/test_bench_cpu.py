"""The CPU benches run end to end on a few events and print every figure they promise."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

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


def test_thread_cpu_adds_up_a_pools_threads_by_name() -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_thread_cpu", ROOT / "bench" / "thread_cpu.py"
    )
    assert spec is not None and spec.loader is not None
    thread_cpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(thread_cpu)
    if not thread_cpu.available():
        pytest.skip("no /proc/self/task: per-thread CPU is read on Linux only")

    burned = threading.Barrier(3)
    release = threading.Event()

    def burn() -> None:  # then stays alive: a thread that ended is no longer in /proc
        end = time.thread_time() + 0.15
        while time.thread_time() < end:
            pass
        burned.wait()
        release.wait()

    before = thread_cpu.snapshot()
    threads = [threading.Thread(target=burn, name=f"decode_{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    burned.wait()
    spent = thread_cpu.spent(before, thread_cpu.snapshot())
    release.set()
    for thread in threads:
        thread.join()
    assert spent["decode workers"] >= 0.28  # both threads, 0.15 s each (ticks of 0.01 s)
    assert thread_cpu._group("rdk:broker12") == "rdk:broker"
    assert thread_cpu._group("engine-window-0") == "engine window worker"
