"""Cheap checks before expensive start-up: what a command would otherwise find out only after
starting the embedded broker, listing a bucket or reaching Kafka.

Each check raises the ConfigError (exit 2, one line) that the engine or the policy registry
would raise later, so the message is the same whichever finds the problem first. Nothing here
loads a model, imports an engine's extra or opens a connection.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from moderator.errors import ConfigError
from moderator.settings import EngineSettings, Settings

if TYPE_CHECKING:
    from moderator.policy.check import DirectoryCheck


def check_settings(settings: Settings, *, engine: bool = True) -> None:
    """The engine's files (unless `engine` is false) and the policy directory."""
    if engine:
        check_engine_files(settings.engine)
    check_policies(settings)


def check_engine_files(engine: EngineSettings) -> None:
    """What the configured engine needs on this machine before it can load: its checkpoint
    directory (transformers, lmdeploy), its extra (transformers, nudenet), its required
    settings (openai). The model itself is not loaded."""
    if engine.kind == "transformers":
        from moderator.engine.transformers.load import TRANSFORMERS_MISSING, checkpoint_dir

        checkpoint_dir(engine)
        if not _installed("torch", "transformers"):
            raise ConfigError(TRANSFORMERS_MISSING)
    elif engine.kind == "lmdeploy":
        from moderator.engine.lmdeploy.config import checkpoint_dir as lmdeploy_dir

        lmdeploy_dir(engine.model)
    elif engine.kind == "nudenet":
        from moderator.engine.factory import NUDENET_MISSING

        if not _installed("nudenet", "onnxruntime"):
            raise ConfigError(NUDENET_MISSING)
    elif engine.kind == "openai":
        if not engine.base_url:
            raise ConfigError("engine.base_url is required for engine.kind=openai")
        if not engine.model:
            raise ConfigError(
                "engine.model is required for engine.kind=openai (the model name the server serves)"
            )


def check_policies(settings: Settings) -> DirectoryCheck:
    """Every policy file loads and every tenant compiles, as `moderator policy validate` checks;
    the first problem as one line (the registry would refuse to start with it)."""
    from moderator.policy.check import check, one_line

    result = check(settings.policies.dir, settings.tenancy)
    if result.errors:
        raise ConfigError(one_line(settings.policies.dir, result.errors))
    return result


def check_directory(name: str, path: Path) -> None:
    """A positional directory argument exists: ConfigError naming the argument otherwise."""
    if not path.is_dir():
        raise ConfigError(f"{name}: {path} is not a directory")


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)
