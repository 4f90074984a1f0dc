"""Chat messages carrying one image and the compiled policy prompt, for each engine family.

The image comes before the text in the user turn: that is how the guard models were trained
(and what their chat templates render as `<image>\\n{policy}`).
"""

from __future__ import annotations

import base64
import io
from typing import Any, Literal

from PIL.Image import Image

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg"}


def hf_messages(prompt: str) -> list[dict[str, Any]]:
    """One user turn for a transformers processor's `apply_chat_template`.

    The image part is a placeholder; the pixels go to the processor separately.
    """
    return [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": prompt}],
        }
    ]


def image_data_url(image: Image, fmt: Literal["PNG", "JPEG"] = "PNG") -> str:
    """`data:` URL of the image as RGB PNG (lossless, the default) or JPEG at quality 95.

    RGB because the vision towers take three channels and JPEG cannot hold alpha or palettes.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    buffer = io.BytesIO()
    if fmt == "JPEG":
        rgb.save(buffer, format="JPEG", quality=95)
    else:
        rgb.save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:{_MIME[fmt]};base64,{encoded}"


def openai_messages(prompt: str, image_url: str) -> list[dict[str, Any]]:
    """One user turn for an OpenAI-compatible chat-completions server.

    The `image_url` content part is the shape `lmdeploy serve api_server`, vLLM and SGLang take;
    `image_url` may be an http(s) URL or a `data:` URL from `image_data_url`.
    """
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": prompt},
            ],
        }
    ]
