"""What each `engine.kind` can ever answer, without building the engine.

Each engine class declares its `capabilities`; this reads that declaration from the class. The
engine modules import without their extras (torch, onnxruntime, lmdeploy and httpx are imported
when an engine is built), so nothing is loaded and no extra is needed: `policy validate --engine
nudenet` works on a machine without the nudenet extra.
"""

from __future__ import annotations

from moderator.engine.base import Capabilities
from moderator.errors import ConfigError


def capabilities(kind: str) -> Capabilities:
    """The `capabilities` declared by the class that `engine.kind = kind` builds."""
    if kind == "fake":
        from moderator.engine.fake import FakeEngine

        return FakeEngine.capabilities
    if kind == "nudenet":
        from moderator.engine.nudenet import NudenetEngine

        return NudenetEngine.capabilities
    if kind == "transformers":
        from moderator.engine.transformers.engine import TransformersEngine

        return TransformersEngine.capabilities
    if kind == "lmdeploy":
        from moderator.engine.lmdeploy.engine import LmdeployEngine

        return LmdeployEngine.capabilities
    if kind == "openai":
        from moderator.engine.openai.engine import OpenAIEngine

        return OpenAIEngine.capabilities
    raise ConfigError(f"engine.kind={kind} is not a known engine")
