"""The GPU suite: what every test under tests/gpu/ shares.

`pytest -m gpu tests/gpu` needs torch with a CUDA device and the packages the engines import
(transformers, xgrammar; lmdeploy's CUDA build for TurboMind). It needs no S3 or Kafka server
and not the devstack extra, so it runs on a bare GPU machine (docs/gpu.md).

- Every test here is marked `gpu` (the hook below adds the marker; the modules name it too).
- Without a CUDA device every test is skipped with the reason. With `GPU_REQUIRED=1` (the
  device run sets it) a missing CUDA device, torch, transformers or xgrammar fails instead, so
  a GPU run cannot pass by skipping. TurboMind's tests skip, saying why, wherever lmdeploy's
  CUDA build is missing: carrying it to a lent machine is optional (docs/gpu.md).
- Warnings: the rest of the suite turns every warning into an error (pyproject's
  `filterwarnings = error`). Building real models on a GPU makes torch, transformers, xgrammar
  and lmdeploy warn about their own internals (kernel choices, deprecations inside their code),
  so here a warning is reported in the summary instead. The project's own code runs under
  `error` in the CPU suite, which drives the same engines on tiny checkpoints.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import NoReturn

import pytest

HERE = Path(__file__).resolve().parent
REQUIRED = "GPU_REQUIRED"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A conftest's hook sees every collected item, not only this folder's.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.gpu)
            item.add_marker(pytest.mark.filterwarnings("default"))


def unavailable(reason: str) -> NoReturn:
    """Skip, saying why; fail instead when GPU_REQUIRED=1."""
    if os.environ.get(REQUIRED) == "1":
        pytest.fail(f"{reason} ({REQUIRED}=1)", pytrace=False)
    pytest.skip(reason)


def cuda_problem() -> str | None:
    """Why there is no usable CUDA device here, or None."""
    if importlib.util.find_spec("torch") is None:
        return "needs torch with CUDA (the transformers extra)"
    import torch

    if not torch.cuda.is_available():
        return f"needs a CUDA GPU (torch {torch.__version__} sees none)"
    return None


def need_modules(*names: str) -> None:
    """Skip (or fail with GPU_REQUIRED=1) unless every module in `names` is importable."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        unavailable(f"needs {', '.join(missing)} (docs/gpu.md lists what a GPU run carries)")


@pytest.fixture(scope="session", autouse=True)
def _cuda_device() -> None:
    """Session scope: decided before any module fixture starts building a model."""
    problem = cuda_problem()
    if problem is not None:
        unavailable(problem)
