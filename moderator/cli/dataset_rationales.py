"""`moderator dataset rationales`: fill a dataset's missing rationales with a guard model.

The command's edge (arguments, settings, the summary, the exit code); the work is
moderator/training/rationales.py. Exit 0 when every sample lacking a rationale has an outcome
(a rationale, or a final rejection), 1 when some hit engine or image errors (run it again to
retry them) or on a runtime failure, 2 on bad arguments, settings or input files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moderator.cli.style import (
    add_command,
    add_config_flag,
    add_engine_flags,
    add_policies_flag,
    examples,
)
from moderator.errors import ConfigError, ModeratorError

if TYPE_CHECKING:
    from moderator.settings import Settings
    from moderator.training.dataset import Sample
    from moderator.training.rationales import Options, Outcome, Plan

# Copies of moderator.training constants (not imported: parsers stay cheap).
MAX_REPEAT = 0.2  # rationales.MAX_REPEAT
SMOKE_TEST_KEY = "rationale_smoke_test"  # dataset.SMOKE_TEST_KEY
DESCRIPTION = (
    "Fill the missing rationales of DATASET with a guard model told the answer and write the "
    "completed dataset to OUT. Each sample without a rationale is judged through the same "
    "engine code as `moderator run` (engine.* settings from --config apply), with its prompt "
    "(or the default policy's) followed by a hint naming its true rating and category. An "
    "answer is kept only when its rating and category agree with the label and its rationale "
    "is at least 8 words, not cut off and not repetitive (share of repeated word trigrams "
    "above --max-repeat); otherwise it is asked again while --attempts remain, then rejected. "
    "Every outcome is appended to OUT.progress.jsonl as it arrives: run the same command "
    "again to resume (ids with an outcome are skipped; --retry-rejected asks the rejected ones "
    "again). A rationale written by a smoke-test model (the fake engine, a tiny checkpoint) is "
    "marked rationale_smoke_test: true in OUT: it means nothing. Exit 0 when every sample got "
    "an outcome, 1 when some hit engine or image errors "
    "(run again to retry them) or on a runtime failure, 2 on bad arguments, settings or input "
    "files."
)


def add_rationales_parser(dataset_sub: Any) -> None:
    """Register `rationales` on the `dataset` group's subparsers."""
    p = add_command(
        dataset_sub,
        "rationales",
        help="fill missing rationales with a guard model told the label",
        description=DESCRIPTION,
        epilog=examples(
            "moderator dataset rationales data/train.json data/train-rationales.json "
            "--engine transformers --model ./LlavaGuard-7B",
            "MODERATOR_ENGINE__BASE_URL=http://127.0.0.1:8000/v1 moderator dataset rationales "
            "data/train.json data/train-rationales.json --engine openai --model big-vlm "
            "--config rationales.yaml --attempts 3",
        ),
    )
    p.add_argument("dataset", type=Path, metavar="DATASET", help="the dataset file to complete")
    p.add_argument(
        "out",
        type=Path,
        metavar="OUT",
        help="where the completed dataset goes (.jsonl: JSON Lines, else a JSON array); its "
        "journal is OUT.progress.jsonl",
    )
    add_engine_flags(p)
    p.add_argument(
        "--max-repeat",
        type=float,
        default=MAX_REPEAT,
        metavar="R",
        help=f"reject a rationale whose share of repeated word trigrams is above R "
        f"(default: {MAX_REPEAT})",
    )
    p.add_argument(
        "--attempts",
        type=int,
        default=1,
        metavar="N",
        help="ask up to N times per sample before rejecting (default: 1; more helps only with "
        "engine.generation.temperature above 0)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="ask for at most N samples in this run")
    p.add_argument(
        "--retry-rejected",
        action="store_true",
        help="ask again for the samples the journal lists as rejected",
    )
    add_config_flag(p)
    add_policies_flag(p)


def cmd_rationales(args: argparse.Namespace) -> int:
    from moderator.cli.offline import offline_settings
    from moderator.training.dataset import read_dataset
    from moderator.training.rationales import Options, journal_path, plan_run, write_output

    _check_flags(args)
    settings = offline_settings(args)
    samples = read_dataset(args.dataset)
    options = Options(
        max_repeat=args.max_repeat,
        attempts=args.attempts,
        limit=args.limit,
        retry_rejected=args.retry_rejected,
    )
    plan = plan_run(samples, args.out, options)  # a bad journal line: before any model loads
    if plan.todo:
        try:
            outcome = _ask(args, settings, plan, options)
        except KeyboardInterrupt:
            print(_interrupted(args, samples, options), file=sys.stderr, flush=True)
            raise
    else:
        print(
            f"rationales: nothing to ask: every sample lacking a rationale has an outcome in "
            f"{journal_path(args.out)} (the engine is not loaded)",
            file=sys.stderr,
        )
        outcome = write_output(plan, args.dataset, args.out)
    for line in summary_lines(outcome, args.out, journal_path(args.out)):
        print(line)
    if outcome.failed:
        codes = ", ".join(f"{code} {n}" for code, n in outcome.failed.most_common())
        raise ModeratorError(
            f"dataset rationales: {sum(outcome.failed.values())} sample(s) failed ({codes}); "
            "run the command again to retry them"
        )
    return 0


def _interrupted(args: argparse.Namespace, samples: list[Sample], options: Options) -> str:
    """What an interrupted run kept (the journal's outcomes) and how to go on."""
    from moderator.training.rationales import journal_path, plan_run

    journal = journal_path(args.out)
    try:
        kept = f"{plan_run(samples, args.out, options).outcome.earlier} sample outcome(s)"
    except ModeratorError:  # a journal line cut short: the rerun names it
        kept = "the outcomes so far"
    return (
        f"moderator: rationales: interrupted: {kept} kept in {journal}; run the same command "
        f"again to continue (it skips them, then writes {args.out})"
    )


def _ask(args: argparse.Namespace, settings: Settings, plan: Plan, options: Options) -> Outcome:
    """Check the engine's files and the images to ask about, load the engine and ask."""
    from moderator.cli.offline import policies_dir
    from moderator.cli.preflight import check_engine_files
    from moderator.training.evaluate import Engines, default_policy_prompt
    from moderator.training.predictions import missing_images, not_found
    from moderator.training.rationales import Target, fill_rationales

    directory = policies_dir(args, settings)
    check_engine_files(settings.engine)
    missing = missing_images(args.dataset, plan.todo)
    if missing:
        raise ConfigError(f"dataset rationales: {not_found(missing)}")
    prompt, _ = default_policy_prompt(directory, settings.tenancy)
    target = Target(args.dataset, args.out, prompt)
    engines = Engines.start(settings, prompt, announce=sys.stderr, label="rationales")
    model = engines.engine.info
    if model.smoke_test:
        print(
            f"rationales: SMOKE-TEST model ({model.engine}: {model.name}): its rationales mean "
            f"nothing; do not train on them (each is marked {SMOKE_TEST_KEY}: true)",
            file=sys.stderr,
        )
    try:
        return fill_rationales(plan, target, engines, settings, options, sys.stderr)
    finally:
        engines.close()


def summary_lines(outcome: Outcome, out: Path, journal: Path) -> list[str]:
    """The run's summary for stdout: what this run did, the rejections by kind, what was left
    for a later run, and what OUT holds (with the smoke-test rationales it marks)."""
    lines = [
        f"rationales: {outcome.lacking} sample(s) lacked one; this run: {outcome.filled} "
        f"filled, {sum(outcome.rejected.values())} rejected, {sum(outcome.failed.values())} "
        f"failed; skipped (done earlier): {outcome.earlier}"
    ]
    lines += [f"  rejected: {kind}: {n}" for kind, n in outcome.rejected.most_common()]
    if outcome.left:
        lines.append(f"  not asked (--limit): {outcome.left}; run the command again for them")
    lines.append(
        f"wrote {out}: {outcome.total_filled} rationale(s) filled, "
        f"{outcome.total_rejected} rejected (journal: {journal})"
    )
    if outcome.total_smoke_test:
        lines.append(
            f"  {outcome.total_smoke_test} of them written by a smoke-test model, marked "
            f"{SMOKE_TEST_KEY}: true: never train on them"
        )
    return lines


def _check_flags(args: argparse.Namespace) -> None:
    if args.engine is None:
        raise ConfigError("dataset rationales: --engine E is required (the model that writes)")
    if not 0.0 <= args.max_repeat <= 1.0:
        raise ConfigError(f"dataset rationales: --max-repeat must be 0..1, got {args.max_repeat}")
    if args.attempts < 1:
        raise ConfigError(f"dataset rationales: --attempts must be at least 1, got {args.attempts}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"dataset rationales: --limit must be at least 1, got {args.limit}")
    if args.out.resolve() == args.dataset.resolve():
        raise ConfigError("dataset rationales: OUT must not be the input dataset")
    if args.out.is_dir():
        raise ConfigError(f"dataset rationales: OUT {args.out} is a folder; give a file name")
    if not args.out.parent.is_dir():
        raise ConfigError(
            f"dataset rationales: cannot write {args.out}: the folder {args.out.parent} "
            "does not exist"
        )
