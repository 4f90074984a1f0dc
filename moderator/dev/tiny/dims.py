"""Dimensions of the random-weight checkpoints `checkpoint.py` writes. Pure data, no torch.

Two sets:

- `TINY`: hidden sizes of 32-256, two layers, images of tens of tokens; the smoke-test
  checkpoints of `make_tiny`. The Qwen2-VL family's sizes are also ones TurboMind builds: text
  and vision attention heads of 64 (tests/test_tiny_turbomind.py checks them against
  TurboMind's limits), so the same tiny checkpoint runs on the `lmdeploy` engine on a GPU.
- `FULL`: the published sizes of the guard models' base architectures, for GPU benchmarks with
  random weights (`bench/gpu.py`): LLaVA-OneVision 0.5B (Qwen2-0.5B text model, SigLIP-so400m
  vision tower) and Qwen2.5-VL 3B. Layer counts, widths, heads, vocabulary, patch and tile sizes
  and image-size limits are those of the released configurations; the weights are random.

The tokenizer is always the small one trained here (`tokenizer.py`). A `FULL` model keeps the
published vocabulary size (`TextDims.vocab_size`): the embedding and output layers cost what
they cost in the real model, and the rows past the tokenizer's tokens are never named by it.
"""

from __future__ import annotations

from dataclasses import dataclass

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""Image normalisation of the Qwen2-VL family (OpenAI CLIP's mean and std)."""
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
"""Image normalisation of LLaVA-OneVision's SigLIP tower."""
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class TextDims:
    """The Qwen2-style decoder shared by all three architectures."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    max_positions: int
    vocab_size: int | None = None  # None: exactly the tokenizer's length
    tie_embeddings: bool = False
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, int, int] | None = None  # Qwen2-VL family: (time, height, width)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class OnevisionVision:
    """LLaVA-OneVision's SigLIP tower and anyres tiling."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    tile: int  # side of one tile in pixels (SigLIP's image_size)
    patch: int
    pinpoints: tuple[tuple[int, int], ...]  # grid resolutions the anyres tiling may pick
    mean: tuple[float, float, float] = SIGLIP_MEAN
    std: tuple[float, float, float] = SIGLIP_STD

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def tokens_per_tile(self) -> int:
        return (self.tile // self.patch) ** 2


@dataclass(frozen=True)
class QwenVision:
    """The Qwen2-VL / Qwen2.5-VL vision encoder and its image-size limits.

    `width` is the encoder's own hidden size: `embed_dim` in a Qwen2-VL config, `hidden_size`
    in a Qwen2.5-VL one. `window_size` and `fullatt_blocks` apply to Qwen2.5-VL only.
    """

    width: int
    intermediate: int
    depth: int
    heads: int
    patch: int
    merge: int
    temporal_patch: int
    min_pixels: int
    max_pixels: int
    window_size: int = 0
    fullatt_blocks: tuple[int, ...] = ()
    mean: tuple[float, float, float] | None = None  # None: the image processor's default
    std: tuple[float, float, float] | None = None

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


@dataclass(frozen=True)
class Dims:
    """Everything `write_checkpoint` needs to know about one architecture's sizes."""

    arch: str  # one of checkpoint.ARCHES
    name: str  # "tiny", or the model size these dimensions reproduce
    text: TextDims
    vision: OnevisionVision | QwenVision


def _ov_pinpoints(tile: int, most: int) -> tuple[tuple[int, int], ...]:
    """Every grid of 1..most tiles on each side, rows first, as LLaVA-OneVision lists them."""
    return tuple((tile * h, tile * w) for h in range(1, most + 1) for w in range(1, most + 1))


# --- tiny: smoke tests ----------------------------------------------------------------------

_TINY_TEXT = TextDims(
    hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, max_positions=4096
)
# Qwen2-VL family: text head_dim 128 / 2 = 64, the smallest TurboMind has attention kernels for;
# M-RoPE splits head_dim / 2 = 32 frequencies over (time, height, width).
_TINY_QWEN_TEXT = TextDims(
    hidden=128,
    intermediate=256,
    layers=2,
    heads=2,
    kv_heads=2,
    max_positions=4096,
    mrope_section=(8, 12, 12),
)
# Vision encoder head_dim 128 / 2 = 64, a size TurboMind's native Qwen ViT accepts. 8 px patches
# merged 2x2 into one token; images resized to 256..4096 pixels, so a 64x48 image is 8x6
# patches = 12 tokens.
_TINY_QWEN_VISION = QwenVision(
    width=128,
    intermediate=256,
    depth=2,
    heads=2,
    patch=8,
    merge=2,
    temporal_patch=2,
    min_pixels=16 * 16,
    max_pixels=64 * 64,
)

TINY: dict[str, Dims] = {
    # 32 px SigLIP tiles of 8 px patches = 16 tokens per tile; up to 2x2 tiles.
    "llava-onevision": Dims(
        arch="llava-onevision",
        name="tiny",
        text=_TINY_TEXT,
        vision=OnevisionVision(
            hidden=32,
            intermediate=64,
            layers=2,
            heads=2,
            tile=32,
            patch=8,
            pinpoints=_ov_pinpoints(32, 2),
        ),
    ),
    "qwen2-vl": Dims(arch="qwen2-vl", name="tiny", text=_TINY_QWEN_TEXT, vision=_TINY_QWEN_VISION),
    # Windows of 32 px = 2x2 merged tokens; the second block attends to the whole image.
    "qwen2.5-vl": Dims(
        arch="qwen2.5-vl",
        name="tiny",
        text=_TINY_QWEN_TEXT,
        vision=QwenVision(
            width=128,
            intermediate=256,
            depth=2,
            heads=2,
            patch=8,
            merge=2,
            temporal_patch=2,
            min_pixels=16 * 16,
            max_pixels=64 * 64,
            window_size=32,
            fullatt_blocks=(1,),
        ),
    ),
}
"""The smoke-test sizes, by architecture."""


# --- full: the released sizes, for GPU benchmarks ---------------------------------------------

FULL: dict[str, Dims] = {
    # llava-onevision-qwen2-0.5b-ov: Qwen2-0.5B text model (24 layers of 896, tied embeddings);
    # SigLIP-so400m at 384 px, 14 px patches = 729 tokens per tile; anyres grids of up to 6x6
    # tiles ("anyres_max_9"). 0.89B parameters.
    "llava-onevision": Dims(
        arch="llava-onevision",
        name="llava-onevision-0.5b",
        text=TextDims(
            hidden=896,
            intermediate=4864,
            layers=24,
            heads=14,
            kv_heads=2,
            max_positions=32768,
            vocab_size=152000,
            tie_embeddings=True,
        ),
        vision=OnevisionVision(
            hidden=1152,
            intermediate=4304,
            layers=26,
            heads=16,
            tile=384,
            patch=14,
            pinpoints=_ov_pinpoints(384, 6),
        ),
    ),
    # Qwen2.5-VL-3B-Instruct: 36 text layers of 2048 (16 heads of 128, 2 KV heads), tied
    # embeddings; a 32-block ViT of 1280 (16 heads of 80) with 112 px windows and full
    # attention in blocks 7, 15, 23 and 31; 14 px patches merged 2x2 (one token per 28x28 px);
    # 3,136 to 12,845,056 pixels per image. 3.75B parameters.
    "qwen2.5-vl": Dims(
        arch="qwen2.5-vl",
        name="qwen2.5-vl-3b",
        text=TextDims(
            hidden=2048,
            intermediate=11008,
            layers=36,
            heads=16,
            kv_heads=2,
            max_positions=128000,
            vocab_size=151936,
            tie_embeddings=True,
            mrope_section=(16, 24, 24),
        ),
        vision=QwenVision(
            width=1280,
            intermediate=3420,
            depth=32,
            heads=16,
            patch=14,
            merge=2,
            temporal_patch=2,
            min_pixels=3136,
            max_pixels=12845056,
            window_size=112,
            fullatt_blocks=(7, 15, 23, 31),
            mean=CLIP_MEAN,
            std=CLIP_STD,
        ),
    ),
}
"""The released sizes of the guard models' base architectures, by architecture."""
