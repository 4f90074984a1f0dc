"""Loopback ports of the development stack: a chosen port is checked before anything starts.

Port 0 means "a free one, picked by the system". Stdlib only: the CLI imports this to parse its
flags.
"""

from __future__ import annotations

import argparse
import socket

from moderator.errors import ConfigError
from moderator.listen import bind_reason

LOOPBACK = "127.0.0.1"
MOCK_PORT_REASON = (
    "librdkafka's mock cluster listens on a port the system picks and has no setting for it"
)
"""Why --kafka-port cannot pin the mock broker: the mock binds port 0 (rdkafka_mock.c) and
advertises the port it got; confluent-kafka exposes no call that changes it."""


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 to 65535 (0: a free one)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535; 0: a free one)")
    return port


def bind_problem(port: int) -> str | None:
    """Why a server cannot listen on LOOPBACK:`port` now, in a few words; None when it can
    (or when `port` is 0). The probe sets SO_REUSEADDR, as the servers do, so a port left in
    TIME_WAIT by an earlier run is not refused."""
    if not port:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
            probe.listen(1)
        except OSError as exc:
            return bind_reason(exc)
    return None


def check_free(option: str, port: int) -> None:
    """ConfigError, one line naming `option` and the port, when `port` cannot be listened on."""
    problem = bind_problem(port)
    if problem is not None:
        raise ConfigError(
            f"{option}: cannot listen on {LOOPBACK}:{port}: {problem} "
            f"(choose another port, or 0 for a free one)"
        )
