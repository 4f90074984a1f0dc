"""A replay's --max-in-flight caps the fetch and decode workers it runs with."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from moderator.replay.runner import replay_overrides
from moderator.settings import load_settings


def test_max_in_flight_caps_decode_workers_set_above_it(tmp_path: Path) -> None:
    settings = load_settings(None, {"fetch.decode_workers": 8})
    plan = SimpleNamespace(run_id="r1", policies_dir=tmp_path, engine="fake", model=None)
    overrides: dict[str, Any] = replay_overrides(settings, cast(Any, plan), 2)
    assert (overrides["fetch.concurrency"], overrides["fetch.decode_workers"]) == (2, 2)
    capped = load_settings(None, {"fetch.decode_workers": 8, **overrides})  # loads: no error
    assert capped.fetch.decode_workers == 2
