from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from moderator.logs import configure_logging
from moderator.settings import LogSettings


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regen-golden",
        action="store_true",
        default=False,
        help="rewrite the golden files under tests/golden/ instead of comparing with them",
    )


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    configure_logging(LogSettings(level="warning", format="json"))


@pytest.fixture
def info_logs() -> Iterator[None]:
    """Lines at `info` reach the processors (and `structlog.testing.capture_logs`)."""
    configure_logging(LogSettings(level="info", format="json"))
    yield
    configure_logging(LogSettings(level="warning", format="json"))


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No MODERATOR_* variable, so an error line names only what the test sets."""
    for name in list(os.environ):
        if name.upper().startswith("MODERATOR_"):
            monkeypatch.delenv(name)
    return monkeypatch
