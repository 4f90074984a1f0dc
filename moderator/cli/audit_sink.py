"""`moderator audit sink`: run the audit sink in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moderator.audit.sink.wiring import run_audit_sink
from moderator.cli.signals import install_stop_handlers
from moderator.logs import configure_logging
from moderator.settings import load_settings


def cmd_audit_sink(config: Path | None, overrides: dict[str, Any] | None = None) -> int:
    """Run the sink until SIGTERM/SIGINT; exit 0 after the last batch is committed.
    `overrides`: dotted settings keys from flags (`--http-port`: http.port)."""
    settings = load_settings(config, overrides or {})
    configure_logging(settings.log)
    run_audit_sink(settings, install_stop_handlers())
    return 0
