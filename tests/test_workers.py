"""`run --workers N` (moderator/cli/workers.py): each worker's own instance id, transactional id
and port; the flags a worker gets; the supervisor forwarding a stop, stopping everyone when a
worker exits, killing a worker that will not stop; a worker noticing its supervisor is gone."""

from __future__ import annotations

import contextlib
import io
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from moderator.cli import workers
from moderator.cli.main import build_parser, main
from moderator.cli.workers import (
    Supervisor,
    check_workers,
    watch_parent,
    worker_argv,
    worker_settings,
)
from moderator.errors import ConfigError
from moderator.settings import load_settings
from tests.policy_fixtures import clear_moderator_env


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.delenv("MODERATOR_HTTP__PORT", raising=False)


# -- what each worker is ---------------------------------------------------------------------


def test_each_worker_has_its_own_instance_and_transactional_id() -> None:
    settings = load_settings(None, {"instance_id": "pod-3", "kafka.group_id": "mod"})
    w0, w1 = worker_settings(settings, 0), worker_settings(settings, 1)
    assert (w0.instance_id, w1.instance_id) == ("pod-3-w0", "pod-3-w1")
    assert w0.transactional_id == "moderator-mod-pod-3-w0"
    assert w1.transactional_id == "moderator-mod-pod-3-w1"
    assert settings.transactional_id == "moderator-mod-pod-3"  # the original is unchanged
    assert w0.kafka.group_id == w1.kafka.group_id == "mod"  # one consumer group


def test_an_explicit_transactional_id_is_suffixed_too() -> None:
    settings = load_settings(None, {"kafka.transactional_id": "fixed"})
    ids = {worker_settings(settings, k).transactional_id for k in range(3)}
    assert ids == {"fixed-w0", "fixed-w1", "fixed-w2"}


def test_worker_k_serves_on_port_plus_k_and_port_0_stays_off() -> None:
    settings = load_settings(None, {"http.port": 9400})
    assert [worker_settings(settings, k).http.port for k in range(3)] == [9400, 9401, 9402]
    off = load_settings(None, {"http.port": 0})
    assert [worker_settings(off, k).http.port for k in range(3)] == [0, 0, 0]


def test_the_rest_of_the_settings_is_shared() -> None:
    settings = load_settings(
        None, {"engine.kind": "fake", "flow.high_in_flight": 77, "flow.low_in_flight": 7}
    )
    other = worker_settings(settings, 1)
    assert other.engine == settings.engine
    assert other.flow == settings.flow
    assert other.kafka.topics == settings.kafka.topics


def test_worker_counts_and_ports_are_checked() -> None:
    settings = load_settings(None, {"http.port": 65534})
    check_workers(settings, 2)
    with pytest.raises(ConfigError, match="beyond 65535"):
        check_workers(settings, 3)
    with pytest.raises(ConfigError, match="between 1 and"):
        check_workers(settings, 0)
    check_workers(load_settings(None, {"http.port": 0}), 64)


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_worker_port_in_use_is_found_before_any_worker_starts() -> None:
    with contextlib.ExitStack() as held:
        for _ in range(20):  # a port taken here whose lower neighbour is free (other programs)
            taken = held.enter_context(socket.socket())
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            if _free(port - 1):
                break
        settings = load_settings(None, {"http.port": port - 1, "http.host": "127.0.0.1"})
        with pytest.raises(ConfigError, match=rf"http.port: cannot listen on 127.0.0.1:{port}: "):
            check_workers(settings, 2)  # worker 1's port
        check_workers(settings, 1)  # worker 0's is free


# -- the command line -------------------------------------------------------------------------


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


def test_workers_out_of_range_is_a_usage_error() -> None:
    code, err = _run(["run", "--engine", "fake", "--workers", "0"])
    assert code == 2
    assert err.strip() == "moderator: --workers must be between 1 and 64, not 0"


def test_workers_with_the_in_process_audit_sink_is_refused() -> None:
    code, err = _run(["run", "--engine", "fake", "--workers", "2", "--with-audit-sink"])
    assert code == 2
    assert "--with-audit-sink runs in one process" in err


def test_a_worker_gets_the_supervisors_flags_and_its_index() -> None:
    argv = worker_argv(
        1,
        config=Path("s.yaml"),
        engine="fake",
        model="m",
        policies=Path("p"),
        http_port=9000,
        debug=True,
    )
    assert argv[:3] == [sys.executable, "-m", "moderator.cli.main"]
    args = build_parser().parse_args(argv[3:])
    assert (args.command, args.worker_index, args.workers) == ("run", 1, 1)
    assert (args.config, args.engine, args.model) == (Path("s.yaml"), "fake", "m")
    assert (args.policies, args.http_port, args.debug) == (Path("p"), 9000, True)


def test_every_run_flag_reaches_the_workers_or_is_the_supervisors_own() -> None:
    """A flag added to `run` later must be forwarded by worker_argv (or listed here)."""
    run = next(
        action.choices["run"]
        for action in build_parser()._actions
        if getattr(action, "choices", None) and "run" in action.choices
    )
    options = {o for a in run._actions for o in a.option_strings if o.startswith("--")}
    own = {"--help", "--workers", "--worker-index", "--check", "--with-audit-sink"}
    forwarded = {"--config", "--engine", "--model", "--policies", "--http-port"}
    assert options == own | forwarded


# -- the supervisor ---------------------------------------------------------------------------

# A worker stand-in: exits 0 on SIGTERM after a short "drain", else runs until killed.
DRAINS = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.2), sys.exit(0)))\n"
    "print('up', flush=True)\n"
    "while True: time.sleep(0.05)\n"
)
STUBBORN = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "while True: time.sleep(0.05)\n"
)


def _commands(*scripts: str) -> tuple[list[str], list[list[str]]]:
    ids = [f"w{k}" for k in range(len(scripts))]
    return ids, [[sys.executable, "-c", script] for script in scripts]


def _supervise(
    scripts: Sequence[str], *, grace_s: float = 10.0, stop_after: float | None = None
) -> tuple[int, float]:
    ids, commands = _commands(*scripts)
    supervisor = Supervisor(lambda k: commands[k], ids, grace_s=grace_s)
    stop = threading.Event()
    if stop_after is not None:
        threading.Timer(stop_after, stop.set).start()
    started = time.monotonic()
    code = supervisor.run(stop)
    return code, time.monotonic() - started


def test_a_stop_is_forwarded_and_clean_workers_exit_0() -> None:
    code, took = _supervise([DRAINS, DRAINS], stop_after=1.0)
    assert code == 0
    assert took < 5


def test_a_worker_exiting_stops_the_others_and_its_code_is_the_commands() -> None:
    crash = "import time, sys\ntime.sleep(0.5)\nsys.exit(3)\n"
    code, took = _supervise([DRAINS, crash])
    assert code == 3
    assert took < 5


def test_a_worker_killed_by_a_signal_makes_the_command_exit_1() -> None:
    killed = "import os, signal, time\ntime.sleep(0.5)\nos.kill(os.getpid(), signal.SIGKILL)\n"
    code, _ = _supervise([DRAINS, killed])
    assert code == 1


def test_a_worker_that_will_not_stop_is_killed_after_the_grace() -> None:
    code, took = _supervise([DRAINS, STUBBORN], grace_s=1.0, stop_after=0.5)
    assert code == 1  # the stubborn one ended by SIGKILL
    assert 1.0 <= took < 5


def test_the_stop_grace_covers_the_drain_and_the_final_checkpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, object] = {}

    class Spy:
        def __init__(self, command: object, ids: list[str], *, grace_s: float) -> None:
            seen.update(ids=ids, grace=grace_s)

        def run(self, stop: threading.Event) -> int:
            return 0

    monkeypatch.setattr(workers, "Supervisor", Spy)
    settings = load_settings(None, {"instance_id": "pod", "flow.drain_grace_s": 7})
    assert workers.supervise(settings, 3, threading.Event(), lambda k: []) == 0
    # the drain, the final checkpoint (4/3 x 30 s before an abort), closing, a worker's start-up
    assert seen == {"ids": ["pod-w0", "pod-w1", "pod-w2"], "grace": 7 + 40 + 10 + 5}


def test_a_worker_stops_when_its_supervisor_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    parents = iter([100, 100, 1])  # re-parented to init on the second check
    monkeypatch.setattr(workers.os, "getppid", lambda: next(parents, 1))
    stop = threading.Event()
    thread = watch_parent(stop, interval_s=0.01)
    assert stop.wait(5)
    thread.join(5)
    assert not thread.is_alive()


def test_a_worker_keeps_running_while_its_supervisor_lives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers.os, "getppid", lambda: 100)
    stop = threading.Event()
    thread = watch_parent(stop, interval_s=0.01)
    assert not stop.wait(0.2)
    stop.set()
    thread.join(5)


def test_sigterm_counts_as_clean_only_for_a_worker_still_starting() -> None:
    assert workers._stopped_cleanly(0)
    assert workers._stopped_cleanly(-signal.SIGTERM)
    assert not workers._stopped_cleanly(1)
    assert not workers._stopped_cleanly(-signal.SIGKILL)
