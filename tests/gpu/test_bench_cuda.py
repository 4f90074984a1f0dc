"""bench/gpu.py's GPU path at tiny size: seconds on a GPU, before the full run is worth starting.

The full run (released sizes, minutes) is `python bench/gpu.py` on its own; this proves on the
same machine that the script's CUDA side works: checkpoints initialised on the GPU, every
transformers cell measured, every row naming the GPU, and TurboMind either measured or left
out with one line saying why.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.gpu.conftest import need_modules

pytestmark = pytest.mark.gpu

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_the_tiny_run_measures_every_cell_on_the_gpu(tmp_path: Path) -> None:
    need_modules("transformers", "xgrammar")
    import torch

    bench = _bench()
    out = tmp_path / "rows.json"
    argv = ["--tiny", "--batch-sizes", "1,4", "--calls", "1", "--tokens", "32"]
    argv += ["--prompt-chars", "400", "--workdir", str(tmp_path / "models"), "--json", str(out)]
    assert bench.main(argv) == 0
    document = json.loads(out.read_text(encoding="utf-8"))
    rows = document["rows"]
    name = torch.cuda.get_device_name()
    transformers_rows = [r for r in rows if r["engine"] == "transformers"]
    assert len(transformers_rows) == 2 * 4 * 2  # architectures x variants x batch sizes
    for row in rows:
        assert row["device"] == name
        assert row["note"] in ("", "errors: unparseable_output"), row
        assert row["items_per_s"] > 0 and row["calls"] == 1
    if document["turbomind"] == "measured":
        assert len(rows) == len(transformers_rows) + 3 * 2
    else:
        assert len(rows) == len(transformers_rows)
        assert "\n" not in document["turbomind"]
