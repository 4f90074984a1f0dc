"""Settings and logging shared by the offline commands that run an engine over a dataset
(`eval`, `dataset rationales`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from moderator.cli.style import policies_left_unset
from moderator.errors import ConfigError
from moderator.settings import Settings


def offline_settings(args: argparse.Namespace) -> Settings:
    """The settings file (`--config`) with `--engine`, `--model` and `--policies` over it, and
    logging configured: the service's `info` becomes `warning`, since a progress line owns
    stderr; `--debug` logs everything."""
    from moderator.engine.factory import check_model_flag
    from moderator.logs import configure_logging
    from moderator.settings import load_settings

    overrides = {
        "engine.kind": args.engine,
        "engine.model": args.model,
        "policies.dir": args.policies,
    }
    settings = load_settings(args.config, overrides)
    check_model_flag(settings.engine.kind, args.model)
    level = "debug" if args.debug else settings.log.level
    configure_logging(
        settings.log.model_copy(update={"level": "warning" if level == "info" else level})
    )
    return settings


def policies_dir(args: argparse.Namespace, settings: Settings) -> Path:
    """`policies.dir`, whose default.yaml prompts the samples without a prompt. Given on purpose
    (`--policies`, or a setting other than the default) it must be a directory: a typo is an
    error, not the bundled default policy used quietly; left at its default and missing, the
    bundled default policy is used."""
    directory = settings.policies.dir
    if not policies_left_unset(args, settings) and not directory.is_dir():
        raise ConfigError(f"policies.dir: {directory} is not a directory")
    return directory
