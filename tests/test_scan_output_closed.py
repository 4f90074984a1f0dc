"""`moderator scan DIR | head -1`: a reader that goes away ends the scan with one line that says
so (no object blamed), exit 1, and no complaint from the interpreter at exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from moderator.policy.bundled import write_default_policy
from moderator.settings import ENV_PREFIX

# More verdict lines than a pipe holds (64 KiB on Linux), so writing must fail once the reader
# has closed its end, however fast the scan is.
IMAGES = 300
CLOSED = "moderator: scan: stopped: the output was closed before every verdict was written"


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos" / "nested"
    root.mkdir(parents=True)
    for i in range(IMAGES):
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(root / f"photo-{i:04d}.png", "PNG")
    return root.parent


def _moderator(*args: str, csv: bool) -> tuple[bytes, int, str]:
    """Run `moderator scan`, read its first stdout line, close the pipe, wait: (line, code,
    stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env[f"{ENV_PREFIX}HTTP__PORT"] = "0"
    argv = [sys.executable, "-m", "moderator.cli.main", "scan", *args]
    if csv:
        argv += ["--format", "csv"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    return first, code, err


@pytest.mark.parametrize("csv", [False, True], ids=["jsonl", "csv"])
def test_a_closed_output_is_named_and_exits_1(photos: Path, tmp_path: Path, csv: bool) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    write_default_policy(policies)
    first, code, err = _moderator(
        str(photos), "--engine", "fake", "--policies", str(policies), csv=csv
    )
    assert first  # the reader got its line before it went away
    assert code == 1, err
    assert err.splitlines()[-1] == CLOSED, err
    assert "photo-" not in err  # no image is blamed for the closed output
    assert "Exception ignored" not in err and "Traceback" not in err, err
