"""Build the configured engine and the window in front of it."""

from __future__ import annotations

from moderator.engine.base import Engine
from moderator.engine.fake import FakeEngine
from moderator.engine.window import EngineWindow
from moderator.errors import ConfigError
from moderator.settings import EngineSettings

NUDENET_MISSING = "engine.kind=nudenet needs the nudenet extra: pip install 'moderator[nudenet]'"


def build_engine(settings: EngineSettings) -> Engine:
    """Load the engine `settings.kind` names; ConfigError (one line) when it cannot be built.

    Never falls back to another kind: a nudity-only detector standing in for a guard model
    would let every other category through.
    """
    if settings.kind == "fake":
        return FakeEngine(settings.fake)
    if settings.kind == "nudenet":
        try:
            from moderator.engine.nudenet import NudenetEngine

            return NudenetEngine(settings.nudenet)
        except ImportError as exc:
            raise ConfigError(NUDENET_MISSING) from exc
    if settings.kind == "transformers":
        from moderator.engine.transformers.engine import TransformersEngine

        return TransformersEngine(settings)
    if settings.kind == "openai":
        from moderator.engine.openai.engine import OpenAIEngine

        return OpenAIEngine(settings)
    if settings.kind == "lmdeploy":
        from moderator.engine.lmdeploy.engine import LmdeployEngine

        return LmdeployEngine(settings)
    raise ConfigError(f"engine.kind={settings.kind} is not a known engine")


def build_window(engine: Engine, settings: EngineSettings) -> EngineWindow:
    """The micro-batching window with the engine section's knobs."""
    return EngineWindow(
        engine,
        batch_size=settings.batch_size,
        max_wait_ms=settings.max_wait_ms,
        concurrency=settings.concurrency,
        timeout_s=settings.timeout_s,
        retries=settings.retries,
    )
