"""Image-only processors for the guard-model checkpoints, for machines without torchvision.

In transformers 5 the LLaVA-OneVision and Qwen2-VL processors own a video processor, and every
video processor needs torchvision, which the `transformers` extra leaves out (it would pull a
CUDA build of torch). A guard model only ever sees images, so these subclasses build the same
processor with no video processor: tokenization, image preprocessing and image-token counting
are the parent classes' own code. `load_processor` tries the checkpoint's own processor first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import (
    AutoProcessor,
    LlavaOnevisionProcessor,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
)


class ImageOnlyLlavaOnevisionProcessor(LlavaOnevisionProcessor):
    # The parameters are spelled out: from_pretrained passes only the keywords __init__ names.
    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        num_image_tokens: int | None = None,
        vision_feature_select_strategy: str | None = None,
        chat_template: str | None = None,
        image_token: str = "<image>",  # noqa: S107  # a vocabulary entry, not a secret
        video_token: str = "<video>",  # noqa: S107
        vision_aspect_ratio: str = "anyres_max_9",
        **_: Any,
    ) -> None:
        super().__init__(  # type: ignore[no-untyped-call]  # untyped in transformers
            image_processor,
            tokenizer,
            None,
            num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            video_token=video_token,
            vision_aspect_ratio=vision_aspect_ratio,
        )


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        **_: Any,
    ) -> None:
        super().__init__(  # type: ignore[no-untyped-call]  # untyped in transformers
            image_processor, tokenizer, None, chat_template=chat_template
        )


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):  # mirrors the HF name
    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        **_: Any,
    ) -> None:
        super().__init__(  # type: ignore[no-untyped-call]  # untyped in transformers
            image_processor, tokenizer, None, chat_template=chat_template
        )


IMAGE_ONLY: dict[str, type[Any]] = {
    "LlavaOnevisionProcessor": ImageOnlyLlavaOnevisionProcessor,
    "Qwen2VLProcessor": ImageOnlyQwen2VLProcessor,
    "Qwen2_5_VLProcessor": ImageOnlyQwen2_5_VLProcessor,
}


def processor_class(path: Path) -> str | None:
    """The processor class the checkpoint names (processor_config.json or tokenizer_config.json)."""
    for name in ("processor_config.json", "tokenizer_config.json"):
        try:
            config = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        value = config.get("processor_class") if isinstance(config, dict) else None
        if isinstance(value, str):
            return value
    return None


def load_processor(path: Path) -> Any:
    """The checkpoint's processor; its image-only twin when the full one cannot be built here."""
    try:
        return AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]  # untyped upstream
            path, local_files_only=True
        )
    except (ImportError, OSError, ValueError) as exc:
        image_only = IMAGE_ONLY.get(processor_class(path) or "")
        if image_only is None:
            raise
        first_error = exc
    try:
        return image_only.from_pretrained(path, local_files_only=True)
    except (ImportError, OSError, ValueError):
        raise first_error from None
