"""`moderator eval`: measure a guard model and its policy prompts against a labelled dataset.

Either runs the configured engine over the dataset (`--engine E --model M`, through the same
engine and window code as the service: moderator/training/evaluate.py) or scores a file of raw
model outputs (`--predictions FILE`, parsed by the service's parser). The metrics and the report
directory come from moderator/training/metrics.py and report.py. `moderator eval compare A B`
sets two report directories side by side. Exit 0 when the report is written, 1 on a runtime
failure or when every sample's request failed (the report is written first), 2 on bad
arguments, settings or input files.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moderator.cli.style import (
    add_command,
    add_config_flag,
    add_engine_flags,
    add_format_flag,
    add_policies_flag,
    examples,
)
from moderator.errors import ConfigError, ModeratorError

if TYPE_CHECKING:
    from moderator.settings import Settings
    from moderator.training.dataset import Sample
    from moderator.training.metrics import Prediction

DESCRIPTION = (
    "Evaluate a guard model on a dataset file (the LlavaGuard conversation format, as "
    "`moderator dataset build` writes it). With --engine E --model M the model judges every "
    "sample through the same engine and batching code as `moderator run` (engine.* settings "
    "from --config apply), with the sample's own prompt or, when it has none, the default "
    "policy's (default.yaml in policies.dir, else the bundled one); progress with an ETA goes "
    "to stderr. With --predictions FILE, existing raw outputs are scored instead: JSON Lines "
    '{"id": ..., "output": "<raw model text>", "score": P(Unsafe) (optional)}, parsed by '
    "the service's own parser. The report directory gets metrics.json, report.md, report.html, "
    "PNG plots and misclassified.jsonl (plus predictions.jsonl after an engine run); the main "
    "metrics are printed; a sample whose request failed (an image that cannot be read or "
    "decoded, an engine error) counts as wrong, in `errors`. docs/evaluation.md defines every "
    "metric. Exit 0 when the report is written, 1 on a runtime failure or when every sample's "
    "request failed (the report is written first), 2 on bad arguments, settings or input files."
)
EXAMPLES = examples(
    "moderator eval --dataset data/test.json --engine transformers --model ./LlavaGuard-0.5B "
    "--report eval-0.5b",
    "MODERATOR_ENGINE__BASE_URL=http://127.0.0.1:23333/v1 moderator eval --dataset "
    "data/test.json --engine openai --model qwenguard-3b --report eval-qwen",
    "moderator eval --dataset data/test.json --predictions outputs.jsonl --report eval-outputs",
    "moderator eval compare eval-0.5b eval-qwen",
)
COMPARE_DESCRIPTION = (
    "Compare two evaluation reports (directories written by `moderator eval`): each metric of "
    "A beside B with the difference, and a plain verdict of which is better. Exit 0 when both "
    "reports were read, 2 when one is missing or is not an evaluation report, or when --out "
    "cannot be written."
)
# Printed after a run, after the headline metrics (all of them are in metrics.json).
SHOWN_AFTER = ("errors", "missing", "roc_auc", "pr_auc", "samples_per_second")


def add_eval_parser(sub: Any) -> None:
    """Register `eval` (and `eval compare`) on the top-level subparsers."""
    p = add_command(
        sub,
        "eval",
        help="evaluate a guard model on a labelled dataset; write a report",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    p.add_argument("--dataset", type=Path, metavar="FILE", help="the dataset file to evaluate on")
    p.add_argument(
        "--predictions",
        type=Path,
        metavar="FILE",
        help="score these raw outputs (JSON Lines) instead of running a model",
    )
    add_engine_flags(p)
    p.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="report directory (created if missing; an earlier report's files are replaced)",
    )
    p.add_argument(
        "--limit", type=int, metavar="N", help="evaluate only the dataset's first N samples"
    )
    add_config_flag(p)
    add_policies_flag(p)
    commands = p.add_subparsers(dest="eval_command", metavar="compare")
    compare = add_command(
        commands,
        "compare",
        help="compare two evaluation reports",
        description=COMPARE_DESCRIPTION,
        epilog=examples(
            "moderator eval compare eval-0.5b eval-7b",
            "moderator eval compare eval-old eval-new --format json",
            "moderator eval compare eval-0.5b eval-7b --out review",
        ),
    )
    compare.add_argument("a", type=Path, metavar="A", help="the first report directory")
    compare.add_argument("b", type=Path, metavar="B", help="the report directory to compare")
    compare.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="also write the comparison to DIR/compare.md (DIR is created if missing)",
    )
    add_format_flag(
        compare,
        ("text", "json"),
        default="text",
        help="text: a table for people; json: the comparison as one document",
    )


def cmd_eval(args: argparse.Namespace) -> int:
    if getattr(args, "eval_command", None) == "compare":
        return cmd_compare(args.a, args.b, output_format=args.format, out=args.out)
    _check_flags(args)
    from moderator.cli.offline import offline_settings
    from moderator.training.dataset import read_dataset

    settings = offline_settings(args)
    samples = read_dataset(args.dataset)
    beyond = {s.id for s in samples[args.limit :]} if args.limit is not None else set()
    if args.limit is not None:
        samples = samples[: args.limit]
    if not samples:
        raise ConfigError(f"eval: {args.dataset} holds no samples")
    if args.predictions is not None:
        predictions, elapsed, source = _from_file(args.predictions, samples, beyond)
    else:
        try:
            predictions, elapsed, source = _from_engine(args, settings, samples)
        except KeyboardInterrupt:
            print(
                f"moderator: eval: interrupted: nothing is kept (no report written in "
                f"{args.report}); run the command again to evaluate from the start",
                file=sys.stderr,
                flush=True,
            )
            raise
    from moderator.training.metrics import compute
    from moderator.training.predictions import failure_lines
    from moderator.training.report import PREDICTIONS_FILE, write_report

    for line in failure_lines(samples, predictions):
        print(f"eval: warning: {line}", file=sys.stderr)
    _create(args.report)
    metrics = compute(samples, predictions, elapsed_s=elapsed)
    header = {
        "dataset": str(args.dataset),
        "dataset_sha256": file_sha256(args.dataset),
        "samples": len(samples),
        **source,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # predictions.jsonl stays when _from_engine wrote it, or when it is the file being scored
    # (the report's own answers scored again): an input is never deleted.
    rescored = args.predictions is not None and _same_file(
        args.predictions, args.report / PREDICTIONS_FILE
    )
    kept = [PREDICTIONS_FILE] if args.predictions is None or rescored else []
    write_report(args.report, metrics, samples, predictions, header, kept=kept)
    for line in summary_lines(metrics):
        print(line)
    print(f"report: {args.report / 'report.md'}")
    if metrics["errors"] == len(samples):
        raise ModeratorError(
            f"eval: every sample failed ({_codes(predictions)}): no model answer to score; "
            f"{args.report / 'misclassified.jsonl'} has each error"
        )
    return 0


def _codes(predictions: list[Prediction]) -> str:
    """`decompression_bomb 3, fetch_failed 1`: the failed requests by error code."""
    from moderator.training.predictions import error_counts

    failed = [p for p in predictions if p.failed]
    return ", ".join(f"{code} {n}" for code, n in error_counts(failed).items())


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve().samefile(b.resolve())
    except OSError:  # b does not exist
        return False


def file_sha256(path: Path) -> str:
    """The file's SHA-256 (hex): `eval compare` tells the same dataset at another path from
    another dataset at the same path."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_flags(args: argparse.Namespace) -> None:
    """Usage errors before anything is read or loaded."""
    if args.dataset is None:
        raise ConfigError("eval: --dataset FILE is required")
    if args.report is None:
        raise ConfigError("eval: --report DIR is required")
    if (args.predictions is None) == (args.engine is None):
        raise ConfigError(
            "eval: give either --predictions FILE (score existing outputs) "
            "or --engine E (run a model), not both"
            if args.engine is not None
            else "eval: give --predictions FILE (score existing outputs) or --engine E "
            "(run a model)"
        )
    if args.predictions is not None and args.model is not None:
        raise ConfigError("eval: --model goes with --engine, not with --predictions")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"eval: --limit must be at least 1, got {args.limit}")
    if args.report.exists() and not args.report.is_dir():
        raise ConfigError(f"eval: --report {args.report}: not a directory")


def _from_file(
    path: Path, samples: list[Sample], beyond: set[str]
) -> tuple[list[Prediction], float | None, dict[str, Any]]:
    """The predictions for `samples` (those for the ids in `beyond`, the samples after
    --limit, are passed over) and the header's source: the file, the request errors its lines
    record and, when a smoke-test model gave any of its answers, `smoke_test`."""
    from moderator.training.predictions import error_counts, match, read_predictions

    matched = match(samples, read_predictions(path), beyond)
    for note in matched.notes():
        print(f"eval: warning: {note}", file=sys.stderr)
    predictions = matched.predictions
    source: dict[str, Any] = {
        "source": "predictions",
        "predictions": str(path),
        "errors": error_counts(predictions),
    }
    if any(p.smoke_test for p in predictions):
        source["smoke_test"] = True
    return predictions, None, source


def _from_engine(
    args: argparse.Namespace, settings: Settings, samples: list[Sample]
) -> tuple[list[Prediction], float, dict[str, Any]]:
    from moderator.cli.offline import policies_dir
    from moderator.cli.preflight import check_engine_files
    from moderator.training.evaluate import (
        ImageSource,
        default_policy_prompt,
        evaluate_engine,
    )
    from moderator.training.predictions import (
        error_counts,
        missing_images,
        not_found,
        write_predictions,
    )
    from moderator.training.report import PREDICTIONS_FILE

    directory = policies_dir(args, settings)
    check_engine_files(settings.engine)
    images = ImageSource(args.dataset, settings)
    missing = missing_images(args.dataset, samples)
    if missing:
        raise ConfigError(f"eval: {not_found(missing)}")
    prompt, where = default_policy_prompt(directory, settings.tenancy)
    without = sum(1 for s in samples if not s.prompt)
    _create(args.report)
    if without:
        print(f"eval: {without} sample(s) without a prompt use {where}", file=sys.stderr)
    run = evaluate_engine(samples, settings, images, prompt, sys.stderr, announce=True)
    if run.model.smoke_test:
        print(
            f"eval: SMOKE-TEST model ({run.model.engine}: {run.model.name}): "
            "the metrics are not meaningful",
            file=sys.stderr,
        )
    note = score_note(run.predictions)
    if note is not None:
        print(f"eval: {note}", file=sys.stderr)
    write_predictions(args.report / PREDICTIONS_FILE, run.predictions)
    source = {
        "source": "engine",
        "engine": run.model.engine,
        "model": run.model.name,
        "revision": run.model.revision,
        "smoke_test": run.model.smoke_test,
        "errors": error_counts(run.predictions),
    }
    return run.predictions, run.stats.seconds, source


def score_note(predictions: list[Prediction]) -> str | None:
    """Why the score metrics are missing or cover only part of an engine run, or None (also
    when no request got an answer: the failures are reported on their own)."""
    predictions = [p for p in predictions if not p.failed]
    scored = sum(1 for p in predictions if p.score is not None)
    if scored == len(predictions):
        return None
    if scored == 0:
        return (
            "no answer came with a score (P(Unsafe)), so ROC-AUC, PR-AUC, calibration and the "
            'threshold table are left out; docs/evaluation.md, "Scores", says what an '
            "engine needs to give one"
        )
    return (
        f"{len(predictions) - scored} of {len(predictions)} prediction(s) have no score: "
        f"the score metrics use the {scored} that have one"
    )


def _create(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"eval: cannot create {directory}: {exc.strerror or exc}") from exc


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """The main metrics, one per line, aligned: `name  value` (4 decimals; `-` when undefined)."""
    from moderator.training.metrics import HEADLINE  # not at start-up: it loads the dataset code

    shown = (*HEADLINE, *SHOWN_AFTER)
    rows = [(key, _shown(metrics.get(key))) for key in shown if key in metrics]
    width = max(len(key) for key, _ in rows)
    return [f"{key.ljust(width)}  {value}" for key, value in rows]


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def cmd_compare(a: Path, b: Path, *, output_format: str, out: Path | None = None) -> int:
    """Print the comparison of report B against report A; with `out`, also write
    `out/compare.md` (its path goes to stderr, so stdout stays the table or the JSON)."""
    from moderator.text import json_text
    from moderator.training.report import compare, compare_table, write_compare

    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"eval compare: --out {out}: not a directory")
    comparison = compare(a, b)
    if output_format == "json":
        print(json_text(comparison, indent=2))
    else:
        print(compare_table(comparison))
    if out is not None:
        try:
            written = write_compare(out, comparison)
        except OSError as exc:
            raise ConfigError(f"eval compare: cannot write {out}: {exc.strerror or exc}") from exc
        print(f"compare: {written}", file=sys.stderr)
    return 0
