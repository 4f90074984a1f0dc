"""Helpers for the settings loader's tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from moderator.errors import ConfigError
from moderator.settings import load_settings


def settings_error(config: Path | None = None, overrides: dict[str, Any] | None = None) -> str:
    """The one-line ConfigError that loading these settings raises."""
    with pytest.raises(ConfigError) as info:
        load_settings(config, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message
