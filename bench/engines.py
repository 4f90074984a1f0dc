"""The transformers engine on a tiny checkpoint: items/s and latency per batch size, and what
constrained decoding costs, measured side by side in one run.

A tiny random-weight model makes the model's own compute small, so these figures show the
engine's overhead (processor, padding, generate loop, grammar masks, scoring), not what a real
guard model costs on a GPU. A random model rarely finishes the JSON (the rationale may run to
`rationale_max_chars`), so every variant generates about `--tokens` tokens per item and the
variants are compared at equal output length; the tokens/s column shows it.

    python bench/engines.py [--arch llava-onevision] [--items 48] [--batch-sizes 1,4,8]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from moderator.dev.tiny.checkpoint import make_tiny
from moderator.engine.base import EngineRequest
from moderator.engine.transformers.engine import TransformersEngine
from moderator.events.verdict import CATEGORIES
from moderator.settings import EngineSettings

PROMPT = (
    "Assess the image against the safety policy below and answer with the JSON template.\n"
    + "\n".join(f"{c}: guideline text for this category." for c in CATEGORIES[:-1])
)


def _images(n: int, seed: int = 7) -> list[Image.Image]:
    rng = random.Random(seed)
    sizes = [(64, 48), (48, 64), (96, 96), (120, 80)]
    out = []
    for i in range(n):
        color = tuple(rng.randrange(256) for _ in range(3))
        out.append(Image.new("RGB", sizes[i % len(sizes)], color))
    return out


def _settings(
    model: Path,
    *,
    structured: bool,
    score: bool,
    tokens: int,
    threads: int,
    max_tiles: int | None = None,
) -> EngineSettings:
    return EngineSettings.model_validate(
        {
            "kind": "transformers",
            "model": str(model),
            "transformers": {
                "device": "cpu",
                "warmup": True,
                "threads": threads,
                "max_image_tiles": max_tiles,
            },
            "generation": {"max_new_tokens": tokens, "structured": structured, "score": score},
        }
    )


def _run(
    engine: TransformersEngine, images: list[Image.Image], batch_size: int
) -> tuple[float, list[float], int, int]:
    """Items/s, per-call latencies (ms), how many outputs parsed, tokens generated."""
    requests = [EngineRequest(f"r{i}", im, PROMPT, CATEGORIES) for i, im in enumerate(images)]
    latencies = []
    parsed = 0
    tokens = 0
    started = time.perf_counter()
    for i in range(0, len(requests), batch_size):
        t0 = time.perf_counter()
        results = engine.classify(requests[i : i + batch_size])
        latencies.append((time.perf_counter() - t0) * 1000.0)
        parsed += sum(r.assessment is not None for r in results)
        tokens += sum(int(r.generation.get("output_tokens", 0)) for r in results)
    elapsed = time.perf_counter() - started
    return len(requests) / elapsed, latencies, parsed, tokens


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="llava-onevision")
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--tokens", type=int, default=64, help="max_new_tokens")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    images = _images(args.items)
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny(Path(tmp) / "tiny", args.arch)
        knobs = {"tokens": args.tokens, "threads": args.threads}
        variants = {
            "constrained+score": _settings(model, structured=True, score=True, **knobs),
            "constrained": _settings(model, structured=True, score=False, **knobs),
            "unconstrained": _settings(model, structured=False, score=False, **knobs),
        }
        if args.arch == "llava-onevision":
            # the tiling cap: a 2x2 anyres grid (4 tiles + base) down to one tile + base
            variants["constrained tiles<=1"] = _settings(
                model, structured=True, score=False, max_tiles=1, **knobs
            )
        engines = {name: TransformersEngine(s) for name, s in variants.items()}
        print(
            f"arch={args.arch} items={args.items} max_new_tokens={args.tokens} "
            f"device=cpu threads={args.threads}; latency is per classify call (one batch)"
        )
        print(
            f"{'variant':<21} {'batch':>5} {'items/s':>8} {'tokens/s':>9} "
            f"{'p50 ms':>8} {'p95 ms':>8} {'parsed':>7}"
        )
        rates: dict[tuple[str, int], float] = {}
        for size in sizes:
            for name, engine in engines.items():
                rate, lat, parsed, tokens = _run(engine, images, size)
                rates[(name, size)] = rate
                print(
                    f"{name:<21} {size:>5} {rate:>8.1f} {rate * tokens / len(images):>9.0f} "
                    f"{statistics.median(lat):>8.1f} {_pct(lat, 0.95):>8.1f} "
                    f"{parsed:>4}/{len(images)}"
                )
        print("\ncost of constrained decoding (unconstrained items/s ÷ variant items/s):")
        for size in sizes:
            base = rates[("unconstrained", size)]
            print(
                f"  batch {size}: grammar {base / rates[('constrained', size)]:.2f}x, "
                f"grammar+score {base / rates[('constrained+score', size)]:.2f}x"
            )
        if ("constrained tiles<=1", sizes[0]) in rates:
            print("tiling cap (constrained tiles<=1 items/s ÷ constrained items/s):")
            for size in sizes:
                ratio = rates[("constrained tiles<=1", size)] / rates[("constrained", size)]
                print(f"  batch {size}: {ratio:.2f}x")
        for engine in engines.values():
            engine.close()


if __name__ == "__main__":
    main()
