"""`python -m tests.eos_broken_run ARGS...`: `moderator ARGS...` with the deliberately broken
checkpoint of tests.eos_scenarios, for subprocess tests run under tests.eos_break_checkpoint."""

from __future__ import annotations

import sys

from moderator.cli.main import main
from tests.eos_scenarios import break_checkpoint

if __name__ == "__main__":
    break_checkpoint()
    raise SystemExit(main(sys.argv[1:]))
