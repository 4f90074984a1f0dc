"""Why a listening socket could not be bound, in a few words (stdlib only: command lines import
it before anything else loads)."""

from __future__ import annotations

import errno
import socket


def bind_reason(exc: OSError) -> str:
    """`exc` (from bind or listen, or from resolving the host) as a short reason."""
    if exc.errno == errno.EADDRINUSE:
        return "the port is in use"
    if exc.errno == errno.EACCES:
        return "permission denied"
    if no_such_address(exc):
        return "no such local address"
    return exc.strerror or str(exc)


def no_such_address(exc: OSError) -> bool:
    """Whether the host, not the port, is at fault: not an address of this machine."""
    return isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
