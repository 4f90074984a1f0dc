"""Build the configured engine and the window in front of it, and warm it up."""

from __future__ import annotations

from opentelemetry.trace import Tracer
from PIL import Image

from moderator.engine.base import Engine, EngineRequest
from moderator.engine.fake import FakeEngine
from moderator.engine.window import BatchCall, EngineWindow, WindowResult
from moderator.engine.window_engines import SelfBatching
from moderator.errors import ConfigError
from moderator.obs.metrics import Metrics
from moderator.obs.tracing import record_batch
from moderator.settings import EngineSettings, FetchSettings

WARM_UP_ID = "warm-up"

NUDENET_MISSING = "engine.kind=nudenet needs the nudenet extra: pip install 'moderator[nudenet]'"
# The engines that read engine.model (docs/engines.md): transformers and lmdeploy as a checkpoint
# directory, openai as the served model name. nudenet (weights in its wheel) and fake read none.
MODEL_KINDS = frozenset({"transformers", "lmdeploy", "openai"})


def check_model_flag(kind: str, model: str | None) -> None:
    """`--model` given for an engine that reads no model: ConfigError (one line, exit 2), never
    a model silently ignored.

    Only the flag is refused: engine.model from a settings file or MODERATOR_ENGINE__MODEL stays
    ignored by these engines, because the CPU image sets it for whichever engine is configured
    (docs/container.md) and a settings file may hold the model of the engine `--engine`
    replaces.
    """
    if model is None or kind in MODEL_KINDS:
        return
    readers = "transformers and lmdeploy read a checkpoint directory, openai a served model name"
    raise ConfigError(
        f"--model {model}: engine.kind={kind} takes no model, so engine.model would be ignored "
        f"({readers}): leave --model out"
    )


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


def build_window(
    engine: Engine,
    settings: EngineSettings,
    metrics: Metrics | None = None,
    tracer: Tracer | None = None,
) -> EngineWindow:
    """The micro-batching window with the engine section's knobs; with `metrics`, each engine
    call's size goes into `moderator_engine_batch_size`; with `tracer`, each call is a
    `moderator.engine.batch` span linking the event spans of the requests it carried."""

    def on_call(size: int) -> None:
        if metrics is not None:
            metrics.record("moderator_engine_batch_size", size)

    def on_batch(call: BatchCall) -> None:
        if tracer is not None:
            record_batch(tracer, call)

    return EngineWindow(
        engine,
        batch_size=settings.batch_size,
        max_wait_ms=settings.max_wait_ms,
        concurrency=settings.concurrency,
        timeout_s=settings.timeout_s,
        retries=settings.retries,
        on_call=on_call if metrics is not None else None,
        on_batch=on_batch if tracer is not None else None,
    )


def decode_ahead(engine: Engine, engine_settings: EngineSettings, fetch: FetchSettings) -> int:
    """How many events may be decoded and not yet answered (`fetch.decode_ahead`; unset: twice
    the requests the engine holds at once, so that a full round waits ready behind the one
    running, and at least one per fetch worker)."""
    if fetch.decode_ahead is not None:
        return fetch.decode_ahead
    if isinstance(engine, SelfBatching):
        holds = engine.max_calls
    else:
        holds = engine_settings.concurrency * engine_settings.batch_size
    return max(2 * holds, fetch.concurrency)


def warm_up(
    window: EngineWindow, prompt: str, categories: tuple[str, ...], input_size: int
) -> WindowResult:
    """One request through the window, so the engine's first call (kernels, caches, a remote
    server's connection) is paid before real traffic and the window sees it answer: a grey
    image of the model's input size under a real policy prompt. Blocks until it resolves."""
    image = Image.new("RGB", (input_size, input_size), (127, 127, 127))
    request = EngineRequest(WARM_UP_ID, image, prompt, categories)
    return window.submit(request).result()
