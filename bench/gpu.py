"""GPU readiness run: the guard engines on random-weight models of the released sizes, one table.

For each architecture (LLaVA-OneVision 0.5B and Qwen2.5-VL 3B, `moderator.dev.tiny.dims.FULL`)
it writes a random-weight checkpoint (weights initialised on the device, nothing downloaded),
then runs the `transformers` engine on it at each batch size in four variants:

- `constrained+score`: the production default (schema-constrained decoding, the score);
- `constrained`: the score off;
- `unconstrained`: no schema, no score;
- `constrained+score, capped`: the default with the image-token cap on
  (`engine.transformers.max_image_tiles` for LLaVA-OneVision, `max_pixels` for Qwen2.5-VL).

Then TurboMind (`engine.kind: lmdeploy`) on the Qwen2.5-VL checkpoint, when lmdeploy and its
CUDA extension are importable; otherwise one line says why not. Every row names the device
that produced it. Random weights make the verdicts meaningless (the `parsed` column shows how
many outputs were valid JSON); what is measured is the cost of a model of that size. The
tokenizer is the small one trained in `moderator/dev/tiny/tokenizer.py`: it splits the policy
prompt into more tokens than the released tokenizers do, so the `in tok` column is higher and
the prefill cost an upper bound (docs/gpu.md).

A time budget (`--budget-s`) keeps the run inside one device call: cells that would start after
it are printed as skipped, not run.

    python bench/gpu.py                          # CUDA machine: released sizes, bf16
    python bench/gpu.py --tiny --device cpu      # anywhere: tiny sizes, the same code path
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from moderator.dev.tiny.checkpoint import write_checkpoint
from moderator.dev.tiny.dims import FULL, TINY, Dims
from moderator.engine.base import EngineRequest, EngineResult
from moderator.events.verdict import CATEGORIES
from moderator.settings import EngineSettings

ARCHES = ("llava-onevision", "qwen2.5-vl")
"""Architectures this run measures, in order; TurboMind runs on the Qwen2.5-VL one."""
TURBOMIND_ARCH = "qwen2.5-vl"
MIN_CAP_PIXELS = 3136  # engine.transformers.max_pixels' lower bound (settings.py)
CPU_THREADS = 1  # torch threads of a CPU run (--device cpu)


@dataclass(frozen=True)
class Variant:
    """One engine configuration of the table."""

    name: str
    structured: bool
    score: bool
    capped: bool = False


TRANSFORMERS_VARIANTS = (
    Variant("constrained+score", structured=True, score=True),
    Variant("constrained", structured=True, score=False),
    Variant("unconstrained", structured=False, score=False),
    Variant("constrained+score, capped", structured=True, score=True, capped=True),
)
# TurboMind sizes images through lmdeploy's own preprocessing: no cap variant.
TURBOMIND_VARIANTS = TRANSFORMERS_VARIANTS[:3]


@dataclass
class Row:
    """One cell of the table: an engine, model, variant and batch size on one device."""

    device: str
    engine: str
    model: str
    variant: str
    batch: int
    calls: int = 0
    items_per_s: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    in_tokens: float | None = None  # prompt and image tokens per item
    image_tokens: float | None = None
    out_tokens: float | None = None  # generated tokens per item
    parsed: int = 0
    items: int = 0
    note: str = ""


COLUMNS = (
    "device",
    "engine",
    "model",
    "variant",
    "batch",
    "calls",
    "items/s",
    "p50 ms",
    "p95 ms",
    "in tok",
    "img tok",
    "out tok",
    "parsed",
    "note",
)


class Budget:
    """Seconds since the start against --budget-s; `reserve` is held back for TurboMind."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self.seconds = seconds
        self.reserve = 0.0

    def elapsed(self) -> float:
        return self._clock() - self._start

    def left(self, *, reserved: bool = True) -> float:
        held = self.reserve if reserved else 0.0
        return self.seconds - held - self.elapsed()


# --- arguments -------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _arch_list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [v for v in values if v not in ARCHES]
    if not values or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(ARCHES)}, got {text!r}"
        )
    return values


def _image_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) * int(height) == 0:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1024x768, got {text!r}")
    return int(width), int(height)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; `--tiny` switches the sizes (and the default image) to the tiny ones."""
    parser = argparse.ArgumentParser(
        prog="bench/gpu.py", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="tiny checkpoints (seconds on a CPU) instead of full size",
    )
    parser.add_argument("--device", default="cuda", help="torch device: cuda, cuda:N or cpu")
    parser.add_argument(
        "--dtype",
        choices=("bfloat16", "float16", "float32"),
        default=None,
        help="weights and activations (default: bfloat16 on CUDA, float32 on a CPU)",
    )
    parser.add_argument(
        "--arch", type=_arch_list, default=list(ARCHES), help="comma-separated; default: both"
    )
    parser.add_argument("--batch-sizes", type=_int_list, default=[1, 8, 32])
    parser.add_argument(
        "--calls", type=int, default=3, help="timed classify calls per cell (after one warm-up)"
    )
    parser.add_argument("--tokens", type=int, default=96, help="generation.max_new_tokens")
    parser.add_argument(
        "--rationale-chars", type=int, default=160, help="generation.rationale_max_chars"
    )
    parser.add_argument(
        "--image-size",
        type=_image_size,
        default=None,
        help="WIDTHxHEIGHT of every test image (default 1024x768; 128x128 with --tiny)",
    )
    parser.add_argument(
        "--cap-tiles",
        type=int,
        default=1,
        help="the capped variant's engine.transformers.max_image_tiles (LLaVA-OneVision)",
    )
    parser.add_argument(
        "--cap-pixels",
        type=int,
        default=401_408,
        help="the capped variant's engine.transformers.max_pixels (Qwen2.5-VL; 401,408 = "
        "512 image tokens of 28x28 px)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=510.0,
        help="stop starting cells after this many seconds (one device call allows 600)",
    )
    parser.add_argument(
        "--turbomind-s",
        type=float,
        default=150.0,
        help="seconds of the budget held back for TurboMind when it can run",
    )
    parser.add_argument(
        "--prompt-chars",
        type=int,
        default=None,
        help="use only the first N characters of the policy prompt (default: all of it)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where checkpoints are written")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.prompt_chars is not None and args.prompt_chars < 1:
        parser.error("--prompt-chars must be at least 1")
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    if args.tokens < 16:
        parser.error("--tokens must be at least 16 (generation.max_new_tokens)")
    if args.cap_tiles < 1:
        parser.error("--cap-tiles must be at least 1")
    if args.cap_pixels < MIN_CAP_PIXELS:
        parser.error(f"--cap-pixels must be at least {MIN_CAP_PIXELS}")
    if args.dtype is None:
        args.dtype = "float32" if args.device == "cpu" else "bfloat16"
    if args.image_size is None:
        args.image_size = (128, 128) if args.tiny else (1024, 768)
    return args


# --- the device, the models, the inputs ------------------------------------------------------


def device_name(device: str) -> str:
    """What produced the figures: the GPU's name, or the CPU with its thread count."""
    import torch

    target = torch.device(device)
    if target.type == "cuda":
        return str(torch.cuda.get_device_name(target))
    threads = torch.get_num_threads()
    return f"cpu {platform.machine()} ({threads} thread{'s' if threads > 1 else ''})"


def dims_for(arch: str, *, tiny: bool) -> Dims:
    return (TINY if tiny else FULL)[arch]


def model_label(dims: Dims) -> str:
    """The model column: the released size it reproduces, or the arch with "-tiny"."""
    return f"{dims.arch}-tiny" if dims.name == "tiny" else dims.name


def write_models(
    args: argparse.Namespace, workdir: Path, arches: Sequence[str]
) -> dict[str, tuple[Dims, Path]]:
    """A random-weight checkpoint per architecture, initialised on --device in --dtype."""
    models = {}
    for arch in arches:
        dims = dims_for(arch, tiny=args.tiny)
        started = time.perf_counter()
        path = write_checkpoint(
            workdir / model_label(dims), dims, seed=0, dtype=args.dtype, device=args.device
        )
        _log(f"wrote {model_label(dims)} to {path} in {time.perf_counter() - started:.1f} s")
        _free(args.device)
        models[arch] = (dims, path)
    return models


def policy_prompt() -> str:
    """The shipped default policy's prompt, as a tenant without a policy file gets it."""
    from moderator.policy.bundled import bundled_default
    from moderator.policy.compiled import compile_policy
    from moderator.policy.document import PolicyFile
    from moderator.policy.load import load_text
    from moderator.policy.resolve import resolve
    from moderator.settings import TenancySettings

    files = {
        "default": load_text(bundled_default().decode("utf-8"), Path("default.yaml")),
        "bench": PolicyFile(),
    }
    return compile_policy(resolve(files, "bench", "default", TenancySettings())).prompt


def images(size: tuple[int, int], count: int = 8, seed: int = 7) -> list[Image.Image]:
    """`count` different noise images of `size` (content does not change a model's cost)."""
    rng = random.Random(seed)
    width, height = size
    return [
        Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
        for _ in range(count)
    ]


def make_requests(
    pool: Sequence[Image.Image], prompt: str, n: int, start: int
) -> list[EngineRequest]:
    return [
        EngineRequest(f"r{start + i}", pool[(start + i) % len(pool)], prompt, CATEGORIES)
        for i in range(n)
    ]


def transformers_settings(
    args: argparse.Namespace, arch: str, dims: Dims, model: Path, variant: Variant
) -> EngineSettings:
    caps: dict[str, int] = {}
    if variant.capped:
        if arch == "llava-onevision":
            caps["max_image_tiles"] = args.cap_tiles
        else:
            largest = getattr(dims.vision, "max_pixels", args.cap_pixels)
            caps["max_pixels"] = max(MIN_CAP_PIXELS, min(args.cap_pixels, largest - 1))
    return EngineSettings.model_validate(
        {
            "kind": "transformers",
            "model": str(model),
            "transformers": {
                "device": args.device,
                "dtype": args.dtype,
                "warmup": False,
                # Tiny matrices gain nothing from more CPU threads; a GPU run ignores this.
                "threads": CPU_THREADS if args.device == "cpu" else None,
                **caps,
            },
            "generation": {
                "max_new_tokens": args.tokens,
                "rationale_max_chars": args.rationale_chars,
                "structured": variant.structured,
                "score": variant.score,
            },
        }
    )


@contextlib.contextmanager
def shared_loads() -> Iterator[dict[str, Any]]:
    """Engines whose transformers settings are equal share one loaded model.

    The variants of one architecture differ in their generation settings, which the engine
    reads per call, so only a different image cap needs its own load: two loads per
    architecture instead of four. The engine's own loader is restored afterwards.
    """
    from moderator.engine.transformers import load as hf_load

    original = hf_load.load
    cache: dict[str, Any] = {}

    def load(settings: EngineSettings) -> Any:
        key = f"{settings.model}\n{settings.transformers.model_dump_json()}"
        if key not in cache:
            started = time.perf_counter()
            cache[key] = original(settings)
            _log(f"loaded {settings.model} in {time.perf_counter() - started:.1f} s")
        return cache[key]

    hf_load.load = load
    try:
        yield cache
    finally:
        hf_load.load = original
        cache.clear()


def token_counts(loaded: Any, rendered: str, image: Image.Image) -> tuple[int, int]:
    """(all input tokens, image tokens) of one request, as the engine's processor makes them."""
    inputs = loaded.processor(text=[rendered], images=[image], return_tensors="pt")
    ids = inputs["input_ids"][0]
    image_token = loaded.model.config.image_token_id
    return int(ids.numel()), int((ids == image_token).sum().item())


# --- measuring -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]); with few calls p95 is the slowest call."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def measure(
    classify: Callable[[list[EngineRequest]], list[EngineResult]],
    make: Callable[[int, int], list[EngineRequest]],
    batch: int,
    calls: int,
) -> tuple[float, list[float], list[EngineResult]]:
    """Items/s over `calls` timed calls of `batch` items, per-call latencies (ms), results."""
    latencies: list[float] = []
    results: list[EngineResult] = []
    total = 0.0
    for call in range(calls):
        batch_requests = make(batch, call * batch)
        started = time.perf_counter()
        results.extend(classify(batch_requests))
        took = time.perf_counter() - started
        total += took
        latencies.append(took * 1000.0)
    return batch * calls / total, latencies, results


def fill(row: Row, rate: float, latencies: list[float], results: list[EngineResult]) -> Row:
    row.calls = len(latencies)
    row.items_per_s = rate
    row.p50_ms = statistics.median(latencies)
    row.p95_ms = percentile(latencies, 0.95)
    row.items = len(results)
    row.parsed = sum(r.assessment is not None for r in results)
    out = [int(r.generation.get("output_tokens", 0)) for r in results]
    row.out_tokens = statistics.fmean(out) if out else None
    given = [r.generation["input_tokens"] for r in results if "input_tokens" in r.generation]
    if given:
        row.in_tokens = statistics.fmean(int(t) for t in given)
    errors = sorted({r.error_code.value for r in results if r.error_code is not None})
    if errors:
        row.note = "errors: " + ", ".join(errors)
    return row


def run_transformers(
    args: argparse.Namespace,
    models: dict[str, tuple[Dims, Path]],
    device: str,
    budget: Budget,
    prompt: str,
    pool: Sequence[Image.Image],
) -> list[Row]:
    from moderator.engine.transformers.engine import TransformersEngine

    rows: list[Row] = []
    largest = max(args.batch_sizes)
    for arch in args.arch:
        dims, path = models[arch]
        with shared_loads() as loads:
            for variant in TRANSFORMERS_VARIANTS:
                cells = [
                    Row(device, "transformers", model_label(dims), variant.name, b)
                    for b in args.batch_sizes
                ]
                rows.extend(cells)
                if budget.left() <= 0:
                    _skip(cells, "skipped: over --budget-s")
                    continue
                settings = transformers_settings(args, arch, dims, path, variant)
                try:
                    engine = TransformersEngine(settings)
                except Exception as exc:  # a failed build is a row, not the end of the run
                    _skip(cells, f"failed: {_one_line(exc)}")
                    continue

                def make(n: int, start: int) -> list[EngineRequest]:
                    return make_requests(pool, prompt, n, start)

                try:
                    total, image_tokens = token_counts(
                        _loaded(loads, settings), engine.render(prompt), pool[0]
                    )
                    engine.classify(make(largest, 0))  # warm-up at the largest batch: untimed
                    for row in cells:
                        if budget.left() <= 0:
                            _skip([row], "skipped: over --budget-s")
                            continue
                        rate, latencies, results = measure(
                            engine.classify, make, row.batch, args.calls
                        )
                        fill(row, rate, latencies, results)
                        row.in_tokens, row.image_tokens = float(total), float(image_tokens)
                        _log(_format_row(row))
                except Exception as exc:  # out of memory at a batch size, say: noted, run on
                    _skip([r for r in cells if r.calls == 0], f"failed: {_one_line(exc)}")
                    _free(args.device)
                finally:
                    engine.close()
                    del engine
        _free(args.device)
    return rows


def _loaded(loads: dict[str, Any], settings: EngineSettings) -> Any:
    return loads[f"{settings.model}\n{settings.transformers.model_dump_json()}"]


def turbomind_unavailable(device: str, model: Path) -> str | None:
    """Why TurboMind cannot run here (one line), or None when it can."""
    if not device.startswith("cuda"):
        return f"TurboMind needs a CUDA device (--device {device})"
    from moderator.engine.lmdeploy.startup import preflight
    from moderator.errors import ConfigError

    try:
        preflight(model)
    except ConfigError as exc:
        return str(exc).strip().splitlines()[0]
    return None


def run_turbomind(
    args: argparse.Namespace,
    dims: Dims,
    model: Path,
    device: str,
    budget: Budget,
    prompt: str,
    pool: Sequence[Image.Image],
) -> list[Row]:
    from moderator.engine.lmdeploy.engine import LmdeployEngine
    from moderator.engine.lmdeploy.startup import start_pipeline
    from moderator.settings import LmdeploySettings

    lmdeploy = LmdeploySettings(max_batch_size=max(args.batch_sizes), cache_max_entry_count=0.5)
    rows = [
        Row(device, "turbomind", model_label(dims), variant.name, b)
        for variant in TURBOMIND_VARIANTS
        for b in args.batch_sizes
    ]
    started = time.perf_counter()
    try:
        pipe = start_pipeline(model, lmdeploy)
    except Exception as exc:
        _skip(rows, f"failed: {_one_line(exc)}")
        return rows
    _log(f"built the TurboMind pipeline in {time.perf_counter() - started:.1f} s")
    largest = max(args.batch_sizes)

    def make(n: int, start: int) -> list[EngineRequest]:
        return make_requests(pool, prompt, n, start)

    try:
        for variant in TURBOMIND_VARIANTS:
            settings = EngineSettings.model_validate(
                {
                    "kind": "lmdeploy",
                    "model": str(model),
                    "lmdeploy": lmdeploy.model_dump(),
                    "generation": {
                        "max_new_tokens": args.tokens,
                        "rationale_max_chars": args.rationale_chars,
                        "structured": variant.structured,
                        "score": variant.score,
                    },
                }
            )
            cells = [r for r in rows if r.variant == variant.name]
            if budget.left(reserved=False) <= 0:
                _skip(cells, "skipped: over --budget-s")
                continue
            try:
                # Never closed: close() would close the pipeline the variants share.
                engine = LmdeployEngine(settings, pipe=pipe)
                engine.classify(make(largest, 0))  # warm-up: untimed
                for row in cells:
                    if budget.left(reserved=False) <= 0:
                        _skip([row], "skipped: over --budget-s")
                        continue
                    fill(row, *measure(engine.classify, make, row.batch, args.calls))
                    _log(_format_row(row))
            except Exception as exc:
                _skip([r for r in cells if r.calls == 0], f"failed: {_one_line(exc)}")
    finally:
        pipe.close()
    return rows


# --- the table -------------------------------------------------------------------------------


def _cells(row: Row) -> list[str]:
    def num(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    parsed = f"{row.parsed}/{row.items}" if row.items else "-"
    return [
        row.device,
        row.engine,
        row.model,
        row.variant,
        str(row.batch),
        str(row.calls) if row.calls else "-",
        num(row.items_per_s, 2),
        num(row.p50_ms, 0),
        num(row.p95_ms, 0),
        num(row.in_tokens, 0),
        num(row.image_tokens, 0),
        num(row.out_tokens, 1),
        parsed,
        row.note,
    ]


def format_table(rows: Sequence[Row]) -> str:
    """The rows as one Markdown table (pasted as is into docs/gpu.md)."""
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def _format_row(row: Row) -> str:
    return "  ".join(f"{c}={v}" for c, v in zip(COLUMNS, _cells(row), strict=True) if v)


def header(args: argparse.Namespace, device: str, prompt_chars: int) -> str:
    import torch
    import transformers

    cuda = torch.version.cuda or "none"
    width, height = args.image_size
    return (
        f"bench/gpu.py on {device}: torch {torch.__version__} (CUDA {cuda}), "
        f"transformers {transformers.__version__}, {args.dtype}, "
        f"{'tiny' if args.tiny else 'released'} sizes with random weights; "
        f"images {width}x{height}, policy prompt {prompt_chars:,} chars, "
        f"max_new_tokens {args.tokens}, "
        f"rationale_max_chars {args.rationale_chars}, {args.calls} timed calls per cell after "
        f"one warm-up; latency is per classify call (one batch)"
    )


# --- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    if args.device == "cpu":
        import torch

        torch.set_num_threads(CPU_THREADS)  # what the engines set; the device label says so
    device = device_name(args.device)
    prompt = policy_prompt()[: args.prompt_chars]
    pool = images(args.image_size)
    arches = list(dict.fromkeys([*args.arch, TURBOMIND_ARCH]))
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        models = write_models(args, workdir, arches)
        tm_dims, tm_model = models[TURBOMIND_ARCH]
        why_not = turbomind_unavailable(args.device, tm_model)
        if why_not is None:
            budget.reserve = args.turbomind_s
        rows = run_transformers(args, models, device, budget, prompt, pool)
        if why_not is None:
            rows += run_turbomind(args, tm_dims, tm_model, device, budget, prompt, pool)
    print(header(args, device, len(prompt)))
    print()
    print(format_table(rows))
    print()
    print(f"TurboMind: {'measured above' if why_not is None else 'not run: ' + why_not}")
    print(f"total {budget.elapsed():.0f} s of --budget-s {args.budget_s:.0f}")
    if args.json is not None:
        document = {
            "header": header(args, device, len(prompt)),
            "turbomind": why_not or "measured",
            "rows": [asdict(row) for row in rows],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


def _skip(rows: Sequence[Row], note: str) -> None:
    for row in rows:
        row.note = note


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
