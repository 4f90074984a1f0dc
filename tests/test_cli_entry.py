"""The `moderator` console script (`moderator.cli.main:entry`): the command's exit code and
output, whether or not a library with native thread pools was loaded (then the process ends
without finalising the interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moderator.policy.bundled import write_default_policy

SCRIPT = """
import sys
for name in sys.argv[1].split(","):
    if name:
        __import__(name)
sys.argv = ["moderator", *sys.argv[2:]]
from moderator.cli.main import entry
entry()
"""


@pytest.mark.parametrize("loaded", ["", "torch"])
@pytest.mark.parametrize(("target", "code"), [("good", 0), ("missing", 2)])
def test_the_console_script_exits_with_the_commands_code_and_output(
    tmp_path: Path, loaded: str, target: str, code: int
) -> None:
    good = tmp_path / "good"
    write_default_policy(good)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # block-buffered
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, loaded, "policy", "validate", str(tmp_path / target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert done.returncode == code, done.stderr
    if code == 0:
        assert "default" in done.stdout  # the table, flushed before the process ended
    else:
        assert done.stderr.startswith("moderator: ") and done.stderr.count("\n") == 1
