"""`moderator scan` of huge-dimension images stays within the decode budget's memory bound.

Sixteen copies of a 62 KB PNG of 7999x7999 grey pixels, scanned with default settings (the
fake engine aside): every one decodes to 61 MiB, and all sixteen fetch workers decode at once.
Before the decode budget the scan peaked at 4-5 GB of RSS; the bound asserted here is the one
docs/operations.md ("Memory and time bounds") documents for `scan` with default settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moderator.policy.bundled import write_default_policy
from tests.hostile_images import flat_png

MiB = 1 << 20
COPIES = 16
# The documented bound for this input: start-up (100 MiB) + fetch.decode_budget_bytes (1 GiB)
# + flow.high_buffered_bytes (256 MiB) + 128 MiB for allocator arenas that keep freed decode
# buffers for a while (the objects themselves are 62 KB). Measured: 750-800 MiB in most runs,
# 1,312 MiB once (2 cores, CPython 3.11, Pillow 13), against 4,147 MiB before the budget.
RSS_BOUND_MIB = 100 + 1024 + 256 + 128


@pytest.mark.memory  # a peak measured beside another worker's tests is not this input's
@pytest.mark.skipif(not hasattr(os, "wait4"), reason="peak RSS from wait4 (POSIX)")
def test_scan_of_huge_dimension_pngs_stays_within_the_bound(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    data = flat_png(7999)
    assert len(data) < 100_000
    for i in range(COPIES):
        (images / f"big-{i:02d}.png").write_bytes(data)
    policies = tmp_path / "policies"
    policies.mkdir()
    write_default_policy(policies)
    out = tmp_path / "verdicts.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATOR_")}
    env["MODERATOR_HTTP__PORT"] = "0"  # no endpoint: tests run side by side
    env["MODERATOR_ENGINE__KIND"] = "fake"
    args = [sys.executable, "-m", "moderator.cli.main", "scan", str(images)]
    args += ["--policies", str(policies), "--output", str(out)]
    err_path = tmp_path / "stderr.txt"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=err)
        # wait4 gives the child's own peak RSS (ru_maxrss, KiB on Linux), kept by the kernel.
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, err_path.read_text(errors="replace")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == COPIES
    assert all(v["error"] is None and v["object"]["width"] == 7999 for v in lines), lines[0]
    peak_mib = usage.ru_maxrss / 1024
    print(f"scan peak RSS {peak_mib:.0f} MiB (bound {RSS_BOUND_MIB} MiB)")
    assert peak_mib < RSS_BOUND_MIB, f"peak RSS {peak_mib:.0f} MiB"
