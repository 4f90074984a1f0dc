"""The README's local-work recipe, run through bash exactly as written, ends with a verdict.

The fenced `sh` block after "Local work against the embedded stack" runs in a temporary folder
that holds `.venv` (a link to the virtual environment running the tests) and `policies` (a link
to the repository's), so its relative paths resolve as they do in a checkout. Nothing of the
stack's environment is inherited: the recipe must load it itself, or `moderator run` falls back
to localhost:9092 and no verdict ever arrives.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
HEADING = "Local work against the embedded stack"
TIMEOUT_S = 120  # measured: about 7 s on the 2-core machine
# What a previous `dev-stack` in the developer's shell may have left in the test's environment.
_STACK_ENV = re.compile(r"^(MODERATOR_KAFKA__|MODERATOR_S3__|AWS_)")


def recipe_block(readme: str) -> str:
    """The first fenced `sh` block after the line that introduces the recipe."""
    start = readme.find(HEADING)
    assert start >= 0, f"README.md has no {HEADING!r}"
    found = re.search(r"^```sh\n(.*?)^```", readme[start:], re.DOTALL | re.MULTILINE)
    assert found is not None, f"no ```sh block after {HEADING!r} in README.md"
    return found.group(1)


def test_recipe_block_is_found() -> None:
    block = recipe_block(README.read_text(encoding="utf-8"))
    assert "moderator run" in block and "moderator dev-stack" in block


def _venv() -> Path:
    """The virtual environment running the tests: the one the recipe's `.venv/bin/...` means."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "moderator").is_file():
        reason = f"no moderator command in {venv}/bin: the tests do not run from a virtualenv"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return venv


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _STACK_ENV.match(k)}
    env["MODERATOR_HTTP__PORT"] = "0"  # tests run side by side: no fixed port
    return env


def _verdicts(stdout: str) -> list[dict[str, Any]]:
    out = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict) and doc.get("schema") == "moderator.verdict/v1":
                    out.append(doc)
    return out


def test_readme_recipe_ends_with_a_verdict(tmp_path: Path) -> None:
    block = recipe_block(README.read_text(encoding="utf-8"))
    (tmp_path / ".venv").symlink_to(_venv())
    (tmp_path / "policies").symlink_to(ROOT / "policies")
    out, err = tmp_path / "recipe.stdout", tmp_path / "recipe.stderr"
    # Its own process group (session): every background process of the recipe is killed below.
    # Output goes to files, not pipes: a background process left running keeps a pipe open.
    with out.open("w") as stdout_file, err.open("w") as stderr_file:
        proc = subprocess.Popen(
            ["bash", "-c", block],
            cwd=tmp_path,
            env=_environment(),
            stdin=subprocess.DEVNULL,
            stdout=stdout_file,
            stderr=stderr_file,
            start_new_session=True,
        )
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    stdout, stderr = out.read_text(), err.read_text()
    report = f"--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-6000:]}"
    # -9: still running after TIMEOUT_S, killed above.
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{report}"
    verdicts = _verdicts(stdout)
    assert len(verdicts) == 1, report
    verdict = verdicts[0]
    # The verdict is the uploaded file's: `upload` named its event on stderr.
    assert f"event {verdict['event_id']} sent to topic" in stderr, report
    assert verdict["error"] is None and verdict["decision"] in ("allow", "review", "block")
    assert verdict["object"]["key"].startswith(f"{verdict['tenant_id']}/")
    # The topics existed before `run` subscribed.
    assert "Subscribed topic not available" not in stderr, report
