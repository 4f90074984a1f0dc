"""bench/gpu.py's CPU-safe parts: arguments, the model sizes, the table, a tiny run on a CPU.

The device run itself (released sizes on a GPU, docs/gpu.md) cannot run here; what can is
checked so that it does not fail on its first minute there: the command line and its defaults,
the released sizes (by parameter count, on torch's meta device: no memory), the Markdown table,
and the whole script at tiny size on a CPU, every cell measured and TurboMind left out with one
line saying why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu.py"
ROW_CELLS = 14  # bench/gpu.py's COLUMNS


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def _unavailable(reason: str) -> NoReturn:
    """Skip here; fail with CI=true, where the transformers extra is installed."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI installs it: make install)", pytrace=False)
    pytest.skip(reason)


def _need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        _unavailable(f"needs the transformers extra ({', '.join(missing)} missing)")


# --- arguments -------------------------------------------------------------------------------


def test_the_defaults_are_the_device_run() -> None:
    args = bench.parse_args([])
    assert args.device == "cuda" and args.dtype == "bfloat16" and not args.tiny
    assert args.arch == ["llava-onevision", "qwen2.5-vl"]
    assert args.batch_sizes == [1, 8, 32]
    assert args.image_size == (1024, 768)
    assert args.budget_s + 60 < 600  # room inside one 10-minute device call
    tiny = bench.parse_args(["--tiny", "--device", "cpu", "--batch-sizes", "2,4"])
    assert tiny.dtype == "float32" and tiny.image_size == (128, 128)
    assert tiny.batch_sizes == [2, 4]
    chosen = bench.parse_args(
        ["--arch", "qwen2.5-vl", "--image-size", "640x480", "--dtype", "float16"]
    )
    assert chosen.arch == ["qwen2.5-vl"]
    assert chosen.image_size == (640, 480) and chosen.dtype == "float16"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-sizes", "1,0"], "expected positive integers"),
        (["--batch-sizes", "one"], "expected comma-separated integers"),
        (["--arch", "llama-guard"], "expected a comma-separated list of llava-onevision"),
        (["--image-size", "1024"], "expected WIDTHxHEIGHT"),
        (["--calls", "0"], "--calls must be at least 1"),
        (["--tokens", "8"], "--tokens must be at least 16"),
        (["--cap-pixels", "100"], "--cap-pixels must be at least 3136"),
        (["--prompt-chars", "0"], "--prompt-chars must be at least 1"),
    ],
)
def test_bad_arguments_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        bench.parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


# --- pure parts ------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    assert bench.percentile([30.0, 10.0, 20.0], 0.5) == 20.0
    assert bench.percentile([30.0, 10.0, 20.0], 0.95) == 30.0  # few calls: the slowest
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 0.95) == 95.0
    assert bench.percentile(values, 0.5) == 50.0


def test_the_budget_holds_back_the_turbomind_reserve() -> None:
    now = [100.0]
    budget = bench.Budget(60.0, clock=lambda: now[0])
    budget.reserve = 20.0
    now[0] = 130.0
    assert budget.elapsed() == 30.0
    assert budget.left() == 10.0
    assert budget.left(reserved=False) == 30.0
    now[0] = 150.0
    assert budget.left() < 0 < budget.left(reserved=False)


def _table_rows(text: str) -> list[list[str]]:
    """The Markdown table's body rows, split into cells."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines, text
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == list(bench.COLUMNS)
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]
    assert all(len(row) == ROW_CELLS for row in rows)
    return rows


def test_the_table_shows_measured_and_skipped_cells() -> None:
    measured = bench.Row("NVIDIA H100 80GB HBM3", "transformers", "qwen2.5-vl-3b", "constrained", 8)
    bench.fill(measured, 12.5, [600.0, 700.0, 650.0], [])
    measured.in_tokens, measured.image_tokens = 2912.0, 999.0
    skipped = bench.Row("NVIDIA H100 80GB HBM3", "turbomind", "qwen2.5-vl-3b", "constrained", 32)
    skipped.note = "skipped: over --budget-s"
    text = bench.format_table([measured, skipped])
    assert text.splitlines()[1] == "|" + "|".join(["---"] * ROW_CELLS) + "|"
    first, second = _table_rows(text)
    assert first[:9] == [
        "NVIDIA H100 80GB HBM3",
        "transformers",
        "qwen2.5-vl-3b",
        "constrained",
        "8",
        "3",
        "12.50",
        "650",
        "700",
    ]
    assert first[9:11] == ["2,912", "999"]
    assert second[5:13] == ["-"] * 8
    assert second[13] == "skipped: over --budget-s"


# --- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "released"),
    [("llava-onevision", 893_675_552), ("qwen2.5-vl", 3_754_622_976)],
)
def test_the_full_sizes_have_the_released_parameter_counts(arch: str, released: int) -> None:
    """LLaVA-OneVision 0.5B has 0.89B parameters, Qwen2.5-VL 3B 3.75B; built on the meta device."""
    _need("torch", "transformers")
    import torch
    from transformers import AutoModelForImageTextToText

    from moderator.dev.tiny.checkpoint import model_config

    dims = bench.dims_for(arch, tiny=False)
    _tokenizer, config = model_config(dims)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(  # type: ignore[no-untyped-call]
            config, dtype=torch.bfloat16
        )
    assert sum(p.numel() for p in model.parameters()) == released
    assert bench.model_label(dims) in ("llava-onevision-0.5b", "qwen2.5-vl-3b")
    assert bench.model_label(bench.dims_for(arch, tiny=True)) == f"{arch}-tiny"


# --- the whole script at tiny size -----------------------------------------------------------

TINY_RUN = ["--tiny", "--device", "cpu", "--batch-sizes", "1,2", "--calls", "1"]
TINY_RUN += ["--tokens", "80", "--rationale-chars", "32", "--prompt-chars", "400"]


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[str, Any]:
    _need("torch", "transformers", "xgrammar")
    out = tmp_path / "rows.json"
    argv = [*TINY_RUN, "--workdir", str(tmp_path / "models"), "--json", str(out), *extra]
    assert bench.main(argv) == 0
    return capsys.readouterr().out, json.loads(out.read_text(encoding="utf-8"))


def test_a_tiny_run_on_a_cpu_prints_one_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stdout, document = _run(tmp_path, capsys)
    rows = _table_rows(stdout)
    variants = [v.name for v in bench.TRANSFORMERS_VARIANTS]
    expected = [
        (f"{arch}-tiny", variant, str(batch))
        for arch in ("llava-onevision", "qwen2.5-vl")
        for variant in variants
        for batch in (1, 2)
    ]
    assert [(r[2], r[3], r[4]) for r in rows] == expected
    for row in rows:
        assert row[0] == "cpu " + os.uname().machine + " (1 thread)"  # who produced the figures
        assert row[1] == "transformers" and row[5] == "1"
        assert re.fullmatch(r"\d[\d,]*\.\d\d", row[6]), row  # items/s
        assert float(row[7].replace(",", "")) > 0 and float(row[8].replace(",", "")) > 0
        parsed, items = (int(n) for n in row[12].split("/"))
        assert items == int(row[4])
        # Random weights: constrained decoding still makes valid JSON; free text rarely does.
        if row[3] != "unconstrained":
            assert parsed == items and row[13] == "", row
    image_tokens = {(r[2], r[3]): int(r[10]) for r in rows}
    for arch in ("llava-onevision", "qwen2.5-vl"):
        capped = image_tokens[(f"{arch}-tiny", "constrained+score, capped")]
        assert 0 < capped < image_tokens[(f"{arch}-tiny", "constrained+score")]
    assert "TurboMind: not run: TurboMind needs a CUDA device (--device cpu)" in stdout
    assert document["turbomind"] == "TurboMind needs a CUDA device (--device cpu)"
    assert len(document["rows"]) == len(rows)
    assert document["header"] in stdout
    assert {row["device"] for row in document["rows"]} == {rows[0][0]}


def test_cells_after_the_budget_are_listed_as_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stdout, document = _run(tmp_path, capsys, "--budget-s", "0", "--arch", "qwen2.5-vl")
    rows = _table_rows(stdout)
    assert len(rows) == len(bench.TRANSFORMERS_VARIANTS) * 2
    assert all(row[13] == "skipped: over --budget-s" and row[6] == "-" for row in rows)
    assert all(row["calls"] == 0 for row in document["rows"])


# --- TurboMind's rows, on doubles ------------------------------------------------------------

VERDICT = '{"rating": "Safe", "category": "NA: None applying", "rationale": "A lake."}'


class _Pipe:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class _TurbomindDouble:
    """Stands in for LmdeployEngine: one verdict per item, TurboMind's token counts."""

    built: list[Any] = []

    def __init__(self, settings: Any, pipe: Any = None) -> None:
        assert pipe is not None  # the variants share the bench's pipeline
        if not settings.generation.structured:
            raise RuntimeError("out of memory\nsecond line")
        self.settings = settings
        _TurbomindDouble.built.append(self)

    def classify(self, batch: list[Any]) -> list[Any]:
        from moderator.engine.guard.output import result_from_output

        record = {"input_tokens": 1200, "output_tokens": 30}
        return [
            result_from_output(VERDICT, r.categories, score=None, generation=dict(record))
            for r in batch
        ]


def test_turbomind_rows_share_one_pipeline_and_note_failures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import moderator.engine.lmdeploy.engine as lmdeploy_engine
    import moderator.engine.lmdeploy.startup as startup

    pipe = _Pipe()
    monkeypatch.setattr(startup, "start_pipeline", lambda model, settings: pipe)
    monkeypatch.setattr(lmdeploy_engine, "LmdeployEngine", _TurbomindDouble)
    _TurbomindDouble.built = []
    args = bench.parse_args(["--batch-sizes", "1,4", "--calls", "2"])
    dims = bench.dims_for("qwen2.5-vl", tiny=False)
    pool = bench.images((16, 16), count=2)
    rows = bench.run_turbomind(
        args, dims, Path("/models/q"), "NVIDIA H200", bench.Budget(60.0), "prompt", pool
    )
    assert [(r.variant, r.batch) for r in rows] == [
        (v.name, b) for v in bench.TURBOMIND_VARIANTS for b in (1, 4)
    ]
    assert pipe.closed == 1
    assert [e.settings.generation.score for e in _TurbomindDouble.built] == [True, False]
    for row in rows:
        assert row.device == "NVIDIA H200" and row.engine == "turbomind"
        assert row.model == "qwen2.5-vl-3b"
        if row.variant == "unconstrained":
            assert row.calls == 0
            assert row.note == "failed: RuntimeError: out of memory"
        else:
            assert row.calls == 2 and row.items == 2 * row.batch == row.parsed
            assert row.in_tokens == 1200 and row.out_tokens == 30 and row.image_tokens is None
            assert row.items_per_s is not None and row.items_per_s > 0 and row.note == ""
