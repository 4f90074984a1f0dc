"""Both test tiers: the observability endpoint is off unless a test turns it on (`http.port`),
so tests running side by side (pytest-xdist workers, `moderator` subprocesses) never compete
for the default port 9400."""

import os

os.environ.setdefault("MODERATOR_HTTP__PORT", "0")
