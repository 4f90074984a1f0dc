"""How many generated inputs each property test runs.

CI runs every generated-input test with its small default (seconds each). A larger campaign runs
the same tests with more inputs: `MODERATOR_FUZZ_EXAMPLES=20000 pytest -m fuzz` replaces every
default with that count. Integration tests import this module too (pytest puts the repository
root on the path).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def examples(default: int) -> int:
    """The number of inputs for one property test: `default`, or MODERATOR_FUZZ_EXAMPLES."""
    raw = os.environ.get("MODERATOR_FUZZ_EXAMPLES", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


def fuzz_settings(default: int) -> settings:
    """Hypothesis settings for a generated-input test: no deadline, no slow-data health check."""
    return settings(
        max_examples=examples(default),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
