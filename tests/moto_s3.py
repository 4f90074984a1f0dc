"""moto's S3 server on a free loopback port, with test credentials in the environment, for
tests that talk to S3 over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from moto.server import ThreadedMotoServer


@contextmanager
def moto_s3() -> Iterator[str]:
    """Start the server; yield its endpoint URL while test credentials are set (no profile)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_SESSION_TOKEN", "testing")
            mp.delenv("AWS_PROFILE", raising=False)
            yield f"http://{host}:{port}"
    finally:
        server.stop()
