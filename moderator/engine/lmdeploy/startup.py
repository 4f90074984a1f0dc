"""Start-up checks of `engine.kind: lmdeploy`: the pipeline is TurboMind serving images, or nothing.

Start-up (`LmdeployEngine(settings)`, through `start_pipeline`) refuses anything but
TurboMind. lmdeploy 0.18 picks the backend in `lmdeploy.archs.autoget_backend`, which
`Pipeline.__init__` calls through `autoget_backend_config`: when `lmdeploy.turbomind.is_available()`
is false (the CUDA extension `lmdeploy.turbomind._turbomind` failed to import;
`lmdeploy/turbomind/__init__.py` keeps the error in `_import_error`) or
`turbomind.supported_models.is_supported(path)` is false, it logs one warning and returns
"pytorch", and `autoget_backend_config` copies our TurbomindEngineConfig's fields onto a
PytorchEngineConfig. Passing a TurbomindEngineConfig therefore does not force TurboMind. So, in
order:

1. the checkpoint is a QwenGuard architecture (`config.check_architecture`);
2. lmdeploy imports, `turbomind.is_available()` is true, and `is_supported(path)` is true, the
   two conditions `autoget_backend` tests;
3. the pipeline is built with `backend_config=TurbomindEngineConfig(...)` and
   `vision_config=VisionConfig(...)`;
4. the built pipeline is checked where it records its choice: `pipe.async_engine.backend` is
   "turbomind", `pipe.backend_config` (the engine's own `engine_config`) is a
   TurbomindEngineConfig, `pipe.async_engine.engine` is a `lmdeploy.turbomind.TurboMind`, and the
   async engine has a vision encoder (a VLAsyncEngine, not a text-only one).

Each failure is one ConfigError line naming the checkpoint and the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from moderator.engine.lmdeploy.config import (
    check_architecture,
    engine_config_kwargs,
    vision_config_kwargs,
)
from moderator.errors import ConfigError
from moderator.settings import LmdeploySettings

log = structlog.get_logger("moderator.engine.lmdeploy")

LMDEPLOY_MISSING = "engine.kind=lmdeploy needs lmdeploy on a CUDA machine: pip install lmdeploy"


def import_lmdeploy() -> None:
    """Import lmdeploy, undoing its process-wide side effect on Pillow.

    `lmdeploy/vl/media/image.py` sets `PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True` when imported,
    which would make our decoder accept truncated uploads instead of failing them as
    `corrupt_image`. We hand LMDeploy decoded images, so it never needs the setting.
    """
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        import lmdeploy  # noqa: F401
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def preflight(model_dir: Path) -> str:
    """Checks 1 and 2: the architecture, lmdeploy, TurboMind's extension, `is_supported`."""
    arch = check_architecture(model_dir)
    try:
        import_lmdeploy()
        from lmdeploy import turbomind
        from lmdeploy.turbomind.supported_models import is_supported
    except (ImportError, OSError) as exc:  # OSError: a shared library of torch or lmdeploy
        if isinstance(exc, ImportError) and exc.name in (None, "lmdeploy"):
            raise ConfigError(LMDEPLOY_MISSING) from exc
        raise ConfigError(f"{LMDEPLOY_MISSING} (importing it failed: {first_line(exc)})") from exc
    if not turbomind.is_available():
        reason = getattr(turbomind, "_import_error", None)
        raise ConfigError(
            f"engine.kind=lmdeploy cannot serve {model_dir}: LMDeploy's TurboMind extension "
            f"did not import ({first_line(reason) if reason else 'no reason given'}), so "
            "LMDeploy would fall back to its PyTorch engine; run on a CUDA machine with "
            "lmdeploy's CUDA build"
        )
    try:
        supported = bool(is_supported(str(model_dir)))
    except Exception as exc:  # it reads the config with transformers; any failure is fatal here
        raise ConfigError(
            f"engine.kind=lmdeploy cannot serve {model_dir}: TurboMind's is_supported failed: "
            f"{first_line(exc)}"
        ) from exc
    if not supported:
        raise ConfigError(
            f"engine.kind=lmdeploy cannot serve {model_dir}: TurboMind does not support this "
            f"{arch} checkpoint (lmdeploy.turbomind.supported_models.is_supported is false), "
            "so LMDeploy would fall back to its PyTorch engine"
        )
    return arch


def build_pipeline(model_dir: Path, settings: LmdeploySettings) -> Any:
    """Check 3: an lmdeploy Pipeline asked for TurboMind and our vision batch size."""
    from lmdeploy import TurbomindEngineConfig, VisionConfig, pipeline

    try:
        return pipeline(
            str(model_dir),
            backend_config=TurbomindEngineConfig(**engine_config_kwargs(settings)),
            vision_config=VisionConfig(**vision_config_kwargs(settings)),
            log_level="WARNING",
        )
    except Exception as exc:  # CUDA, memory, weights: all mean this engine cannot start
        raise ConfigError(
            f"engine.kind=lmdeploy: building the TurboMind pipeline for {model_dir} failed: "
            f"{first_line(exc)}"
        ) from exc


def turbomind_problem(pipe: Any) -> str | None:
    """Check 4: why the built pipeline is not TurboMind serving images, or None if it is."""
    from lmdeploy import TurbomindEngineConfig, turbomind

    engine = getattr(pipe, "async_engine", None)
    if engine is None:
        return "the pipeline has no async_engine (not the lmdeploy 0.18 Pipeline API)"
    backend = getattr(engine, "backend", None)
    if backend != "turbomind":
        return f"LMDeploy built its {backend} engine instead (silent fallback)"
    config = getattr(pipe, "backend_config", None)
    if not isinstance(config, TurbomindEngineConfig):
        return f"the engine runs with a {type(config).__name__}, not a TurbomindEngineConfig"
    turbomind_class = getattr(turbomind, "TurboMind", None)
    inner = getattr(engine, "engine", None)
    if turbomind_class is None or not isinstance(inner, turbomind_class):
        return f"the engine object is {type(inner).__qualname__}, not lmdeploy.turbomind.TurboMind"
    if getattr(engine, "vl_encoder", None) is None:
        return "LMDeploy built a text-only pipeline (no vision encoder)"
    return None


def verify_turbomind(pipe: Any, model_dir: Path) -> None:
    """Raise ConfigError unless `pipe` really is TurboMind serving images."""
    problem = turbomind_problem(pipe)
    if problem is not None:
        raise ConfigError(
            f"engine.kind=lmdeploy: LMDeploy did not build TurboMind for {model_dir}: {problem}"
        )


def start_pipeline(model_dir: Path, settings: LmdeploySettings) -> Any:
    """Checks 1 to 4 in order; the verified pipeline (closed again if check 4 fails)."""
    arch = preflight(model_dir)
    pipe = build_pipeline(model_dir, settings)
    try:
        verify_turbomind(pipe, model_dir)
    except ConfigError:
        pipe.close()
        raise
    log.info("lmdeploy_engine_ready", model=str(model_dir), architecture=arch, backend="turbomind")
    return pipe


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
