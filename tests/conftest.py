from __future__ import annotations

import pytest

from moderator.logs import configure_logging
from moderator.settings import LogSettings


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    configure_logging(LogSettings(level="warning", format="json"))
