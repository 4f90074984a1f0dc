"""`moderator run --pin-cpus` (moderator/cli/affinity.py): a CPU per consumer process, refused
when there are fewer CPUs than processes; pinning reaches every thread of the process."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest

from moderator.cli import affinity
from moderator.cli.affinity import cpus_for, describe
from moderator.cli.main import main
from moderator.errors import ConfigError
from tests.policy_fixtures import clear_moderator_env

needs_affinity = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="os.sched_setaffinity is Linux-only"
)


def test_worker_k_gets_the_kth_usable_cpu() -> None:
    assert cpus_for(1, [2, 5, 7]) == [2]
    assert cpus_for(3, [2, 5, 7]) == [2, 5, 7]


def test_more_processes_than_cpus_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        cpus_for(3, [0, 1])
    assert str(caught.value) == (
        "--pin-cpus with 3 consumer process(es): this process may run on 2 CPU(s) (0-1); "
        "use --workers 2 or fewer"
    )


def test_cpu_sets_are_written_as_ranges() -> None:
    assert describe([0, 1, 2, 3, 6]) == "0-3,6"
    assert describe([4]) == "4"
    assert describe([1, 3, 5, 6]) == "1,3,5-6"


def test_the_command_refuses_before_contacting_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.setattr(affinity, "usable_cpus", lambda: [0, 1])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["run", "--engine", "fake", "--workers", "3", "--pin-cpus"])
    assert code == 2
    assert err.getvalue().strip() == (
        "moderator: --pin-cpus with 3 consumer process(es): this process may run on 2 CPU(s) "
        "(0-1); use --workers 2 or fewer"
    )


# A process that starts a thread, pins itself, starts another, and reports every thread's CPUs.
PINS = """
import json, os, sys, threading
from moderator.cli.affinity import pin_process, usable_cpus
ready, done = threading.Event(), threading.Event()
def idle():
    ready.set()
    done.wait()
before = threading.Thread(target=idle)
before.start()
ready.wait()
cpu = usable_cpus()[-1]
pin_process(cpu)
after = threading.Thread(target=done.wait)
after.start()
tasks = sorted(int(t) for t in os.listdir("/proc/self/task"))
print(json.dumps({"cpu": cpu, "tasks": [sorted(os.sched_getaffinity(t)) for t in tasks]}))
done.set()
"""


@needs_affinity
def test_pinning_reaches_threads_started_before_and_after() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PINS], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert len(report["tasks"]) >= 3  # the main thread and the two started
    assert all(cpus == [report["cpu"]] for cpus in report["tasks"])


@needs_affinity
def test_a_cpu_outside_the_allowed_set_is_a_one_line_error() -> None:
    outside = max(os.sched_getaffinity(0)) + 4096  # beyond any CPU this kernel has
    with pytest.raises(
        ConfigError, match=rf"^--pin-cpus: cannot pin this process to CPU {outside}: "
    ):
        affinity.pin_process(outside)
