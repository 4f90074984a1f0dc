"""The container image (Dockerfile, docs/container.md), built and run with podman.

The `cpu` target is built once per module with EXTRAS=openai,postgres,api,devstack: no torch, so
the build stays within about a minute on two cores (the default image's transformers and
nudenet extras are not built here); `devstack` is there for `moderator demo`. The build runs
with --pull=never against the local base images that .ci/podman.sh makes, with the host's CA
bundle mounted for pip. Every container runs with --network=none: nothing here needs a network
once the image is built. The image and containers made here are removed afterwards.

Without podman or the base image the tests skip with the reason locally and fail with CI=true,
so a CI machine that lost podman cannot pass by skipping. Locally: `bash .ci/podman.sh`, then
pytest this file; the podman settings are read from the file that script writes when the
environment does not name them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from moderator.policy.bundled import write_default_policy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "docker.io/library/python:3.11-slim"
EXTRAS = "openai,postgres,api,devstack"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
PODMAN_ROOT = Path(os.environ.get("MODERATOR_PODMAN_ROOT", "/var/tmp/moderator-podman"))
PODMAN_VARIABLES = ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "TMPDIR")
BUILD_TIMEOUT_S = 420
RUN_TIMEOUT_S = 120
UID = "10001"


def podman_unavailable(reason: str) -> NoReturn:
    """Skip (locally) or fail (CI=true) because podman or its base image is missing."""
    message = f"podman unavailable: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI sets it up with .ci/podman.sh)", pytrace=False)
    pytest.skip(f"{message} (run: bash .ci/podman.sh; docs/container.md)")


def podman_env() -> dict[str, str]:
    """This environment, plus the podman settings .ci/podman.sh wrote when it names none."""
    env = dict(os.environ)
    saved = PODMAN_ROOT / "env"
    if "CONTAINERS_CONF" not in env and saved.is_file():
        for line in saved.read_text().splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            if name in PODMAN_VARIABLES:
                env[name] = value
    return env


@dataclass(frozen=True)
class Image:
    tag: str
    env: dict[str, str]

    def podman(
        self, *args: str, timeout: float = RUN_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def run(self, *args: str, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        """`podman run` of this image, no network, no healthcheck timer, removed afterwards."""
        return self.podman(
            "run", "--rm", "--network=none", "--no-healthcheck", *options, self.tag, *args
        )


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    if shutil.which("podman") is None:
        podman_unavailable("the podman command is not installed")
    env = podman_env()
    if "CONTAINERS_CONF" not in env:
        podman_unavailable(f"no podman settings in the environment or in {PODMAN_ROOT / 'env'}")
    found = subprocess.run(
        ["podman", "image", "exists", BASE_IMAGE], env=env, capture_output=True, timeout=60
    )
    if found.returncode != 0:
        podman_unavailable(f"the base image {BASE_IMAGE} is not in local storage")
    built = Image(f"localhost/moderator-test:{uuid.uuid4().hex[:12]}", env)
    build = ["build", "--format", "docker", "--pull=never", "--layers=false", "--target", "cpu"]
    build += ["--build-arg", f"EXTRAS={EXTRAS}", "--tag", built.tag]
    if HOST_CA.is_file():
        build += ["--volume", f"{HOST_CA}:{HOST_CA}:ro"]
    started = time.monotonic()
    done = built.podman(*build, str(ROOT), timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        pytest.fail(f"podman build failed:\n{(done.stdout + done.stderr)[-4000:]}", pytrace=False)
    print(f"built {built.tag} in {time.monotonic() - started:.0f} s")
    try:
        yield built
    finally:
        built.podman("rmi", "--force", built.tag)


def _inspect(image: Image, template: str) -> str:
    done = image.podman("image", "inspect", "--format", template, image.tag)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_demo_runs_in_the_image(image: Image) -> None:
    done = image.run("demo", "--engine", "fake", "--events", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    header = done.stdout.splitlines()[0].split()
    assert header[:4] == ["TENANT", "OBJECT", "DECISION", "ASSESSMENT"]
    # 3 uploads (one image, a corrupt one, a missing one) and the re-upload after them.
    assert "4/4 verdicts" in done.stdout
    assert "Traceback" not in done.stderr


def test_run_without_a_broker_is_one_line_and_exit_2(image: Image, tmp_path: Path) -> None:
    unreachable = (
        "--env=MODERATOR_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:1",
        "--env=MODERATOR_KAFKA__STARTUP_TIMEOUT_S=3",
        # The CI image has no nudenet extra, and `run` checks the engine before the broker.
        "--env=MODERATOR_ENGINE__KIND=fake",
    )
    # `run` checks the policy directory before the broker too: the image's policies.dir,
    # /policies, is there once a directory is mounted on it.
    unmounted = image.run(options=unreachable)
    assert unmounted.returncode == 2, unmounted.stderr[-3000:]
    lines = [line for line in unmounted.stderr.splitlines() if line.startswith("moderator:")]
    assert lines == ["moderator: policies.dir: /policies is not a directory"], unmounted.stderr
    policies = tmp_path / "policies"
    write_default_policy(policies)
    policies.chmod(0o755)
    for path in policies.iterdir():
        path.chmod(0o644)
    mounted = (*unreachable, f"--volume={policies}:/policies:ro")
    done = image.run(options=mounted)  # the image's own command: `moderator run`
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("moderator:")]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("moderator: kafka: cannot reach the cluster within 3 s")
    assert "Traceback" not in done.stderr

    # `run --check` prints its table on stdout and one line on stderr; the image's mount points
    # appear in the table.
    checked = image.run("run", "--check", options=unreachable)
    assert checked.returncode == 2, checked.stderr[-3000:]
    lines = [line for line in checked.stderr.splitlines() if line.startswith("moderator:")]
    assert len(lines) == 1 and lines[0].startswith("moderator: run --check: "), checked.stderr
    assert "kafka" in lines[0]
    rows = {line.split()[0]: line for line in checked.stdout.splitlines() if line.strip()}
    assert "FAIL" in rows["kafka"] and "cannot reach the cluster within 3 s" in rows["kafka"]
    assert "policies.dir: /policies is not a directory" in rows["policies"]
    assert "Traceback" not in checked.stderr


def test_the_image_runs_as_a_non_root_user(image: Image) -> None:
    assert _inspect(image, "{{.Config.User}}") == f"{UID}:{UID}"
    probe = (
        "import os, shutil; open('probe', 'w').close(); "
        "print(os.getuid(), os.getgid(), os.getcwd(), os.path.exists('/src'), "
        "shutil.which('gcc'), os.environ['MODERATOR_ENGINE__MODEL'])"
    )
    done = image.run("-c", probe, options=("--entrypoint=python",))
    assert done.returncode == 0, done.stderr[-3000:]
    # The data directory is writable; no build tree or compiler came along from the builder.
    assert done.stdout.split() == [UID, UID, "/var/lib/moderator", "False", "None", "/models"]


def test_the_build_leaves_the_ca_bundle_as_the_base_had_it(image: Image) -> None:
    if not HOST_CA.is_file():
        pytest.skip(f"no {HOST_CA} on this machine, so none was mounted into the build")
    command = ("--entrypoint=sha256sum",)
    ours = image.podman("run", "--rm", "--network=none", *command, image.tag, str(HOST_CA))
    base = image.podman("run", "--rm", "--network=none", *command, BASE_IMAGE, str(HOST_CA))
    assert ours.returncode == 0 and base.returncode == 0, ours.stderr + base.stderr
    assert ours.stdout == base.stdout


def test_the_healthcheck_calls_healthz(image: Image) -> None:
    check = json.loads(_inspect(image, "{{json .Config.Healthcheck}}"))
    assert check["Test"][:2] == ["CMD", "python"]
    assert "/healthz" in check["Test"][-1]
    assert _inspect(image, "{{json .Config.ExposedPorts}}") == '{"9400/tcp":{}}'

    # Healthy while `moderator demo` serves http.port; unhealthy where nothing listens.
    # podman schedules healthchecks with systemd timers, which CI machines lack (it logs that and
    # runs the container anyway): `healthcheck run` runs the check once, exit 0 or 1.
    name = f"moderator-test-{uuid.uuid4().hex[:12]}"
    idle = f"{name}-idle"
    slow = ("--env=MODERATOR_ENGINE__FAKE__LATENCY_MS=3000", "--health-interval=disable")
    try:
        started = image.podman(
            "run", "--detach", "--network=none", f"--name={name}", *slow,
            image.tag, "demo", "--engine", "fake", "--events", "24",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        sleeper = image.podman(
            "run", "--detach", "--network=none", f"--name={idle}", "--health-interval=disable",
            "--entrypoint=python", image.tag, "-c", "import time; time.sleep(120)",
        )  # fmt: skip
        assert sleeper.returncode == 0, sleeper.stderr
        healthy, state = False, "not started"
        deadline = time.monotonic() + 90
        while not healthy and time.monotonic() < deadline:
            state = image.podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if state != "running":
                break
            healthy = image.podman("healthcheck", "run", name).returncode == 0
            time.sleep(0.5)
        logs = image.podman("logs", name).stderr[-3000:]
        assert healthy, f"never healthy while the demo ran ({state}):\n{logs}"
        assert image.podman("healthcheck", "run", idle).returncode == 1
    finally:
        image.podman("rm", "--force", "--time=0", name, idle)
