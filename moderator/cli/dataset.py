"""`moderator dataset build|from-audit`: make evaluation and training datasets.

`build` turns a labelled manifest into train / eval / test files; `from-audit` turns audited
decisions into one dataset file. Both write the format of moderator/training/dataset.py
(docs/evaluation.md, "Datasets"). A subcommand is one `_add_*` parser function, listed in
`add_dataset_parser`, and one entry in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moderator.cli.audit_query import add_filter_flags, filter_values, flag_name
from moderator.cli.dataset_rationales import add_rationales_parser, cmd_rationales
from moderator.cli.style import (
    TENANT_METAVAR,
    add_command,
    add_config_flag,
    add_group,
    add_policies_flag,
    examples,
)
from moderator.errors import ConfigError
from moderator.words import counted

DEFAULT_SPLIT = "0.8,0.1,0.1"
DEFAULT_MIN_SIDE = 32  # training/build_run.py DEFAULT_MIN_SIDE


def add_dataset_parser(sub: Any) -> Any:
    """The `dataset` group and its commands; returns the group's subparsers."""
    dataset_sub = add_group(
        sub,
        "dataset",
        help="build evaluation and training datasets (LlavaGuard format)",
        description=(
            "Datasets in the LlavaGuard format: one image, the policy prompt and the expected "
            "JSON answer (rating, category, rationale) per sample (docs/evaluation.md). build "
            "makes train, eval and test splits from a labelled manifest; from-audit turns "
            "audited production decisions into a dataset; rationales fills missing rationales "
            "with a guard model told the label."
        ),
        epilog=examples(
            "moderator dataset build labels.csv --out data --augment",
            "moderator dataset from-audit --out disputed --labels reviews.csv --labelled-only",
        ),
        dest="dataset_command",
    )
    _add_build(dataset_sub)
    _add_from_audit(dataset_sub)
    add_rationales_parser(dataset_sub)
    return dataset_sub


def _add_build(dataset_sub: Any) -> None:
    build = add_command(
        dataset_sub,
        "build",
        help="labelled manifest -> train/eval/test splits, with policy augmentation",
        description=(
            "Read MANIFEST (CSV or JSON Lines: image path or s3:// URI, rating, category, "
            "optional rationale and id), check every row and every image (read and decoded "
            "as the service does, under the fetch settings, at least --min-side pixels, no "
            "image twice), split the images into train, eval and test stratified by category "
            "and rating, and write DIR/train.json, eval.json, test.json and build.json. Every "
            "prompt is the base tenant's policy compiled by the service's policy compiler; "
            "--augment adds policy variants of each image (a violated category declared "
            "allowed: Safe; other categories allowed: label kept; a safe image's category "
            "declared sensitive: Unsafe). Progress goes to stderr, a summary table to stdout. "
            "Exit 0 when written; 1 when bad rows were found (each listed as "
            "MANIFEST:LINE: field: reason, nothing written; --skip-bad builds without them and "
            "lists them in DIR/bad_rows.jsonl); 2 on a usage, policy or manifest-header error."
        ),
        epilog=examples(
            "moderator dataset build labels.csv --out data",
            "moderator dataset build labels.jsonl --out data --seed 7 --split 0.6,0.2,0.2",
            "moderator dataset build labels.csv --out data --policies policies --tenant kids",
            "moderator dataset build labels.csv --out data --augment --oversample --skip-bad",
        ),
    )
    build.add_argument("manifest", type=Path, metavar="MANIFEST", help="CSV or JSON Lines file")
    build.add_argument("--out", type=Path, required=True, metavar="DIR", help=_OUT_HELP)
    add_policies_flag(build)
    build.add_argument(
        "--tenant",
        default="default",
        metavar=TENANT_METAVAR,
        help="the tenant whose policy (its default surface) is the base of every prompt "
        "(default: default, default.yaml)",
    )
    build.add_argument(
        "--augment",
        action="store_true",
        help="add the policy-augmented variants of each image (ids get _allowed, "
        "_other_allowed or _sensitive)",
    )
    build.add_argument(
        "--oversample",
        action="store_true",
        help="repeat the originals of the smaller category/rating groups of the training "
        "split up to the largest group's size (at most 10 times a group; ids get _copyK)",
    )
    build.add_argument("--seed", type=int, default=0, metavar="N", help="seed (default: 0)")
    build.add_argument(
        "--split",
        default=DEFAULT_SPLIT,
        metavar="A,B,C",
        help=f"train, eval and test shares, adding up to 1 (default: {DEFAULT_SPLIT})",
    )
    build.add_argument(
        "--skip-bad",
        action="store_true",
        help="build without the bad rows and list them in DIR/bad_rows.jsonl (default: stop)",
    )
    build.add_argument(
        "--min-side",
        type=int,
        default=DEFAULT_MIN_SIDE,
        metavar="N",
        help=f"smallest shorter side of an image, in pixels (default: {DEFAULT_MIN_SIDE})",
    )
    add_config_flag(build)


def _add_from_audit(dataset_sub: Any) -> None:
    export = add_command(
        dataset_sub,
        "from-audit",
        help="audited decisions -> a dataset, images fetched from S3 by version",
        description=(
            "Select audit rows with the filters of `audit query` and write each as a sample to "
            "DIR/dataset.json: the image fetched from S3 (the version the service judged, "
            "checked against the recorded SHA-256 and decoded) into DIR/images/, the prompt "
            "the service sent, and the label of --labels FILE when it has the event, else the "
            "recorded assessment. Rows that cannot become samples (redacted, error verdicts "
            "without a label, smoke-test models, missing or changed objects) are listed in "
            "DIR/skipped.jsonl; DIR/export.json counts everything. Exit 0 when written, 1 "
            "when the audit database cannot be opened, 2 on a bad flag value or settings."
        ),
        epilog=examples(
            "moderator dataset from-audit --out prod-nov --tenant acme --since 2026-11-01",
            "moderator dataset from-audit --out disputed --labels reviews.csv --labelled-only",
            "moderator dataset from-audit --out blocks --decision block --max-samples 500",
        ),
    )
    export.add_argument("--out", type=Path, required=True, metavar="DIR", help=_OUT_HELP)
    add_filter_flags(export)
    export.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="reviewer labels, CSV or JSON Lines: event_id, rating, category, optional "
        "rationale; a labelled event takes this label instead of the model's",
    )
    export.add_argument(
        "--labelled-only",
        action="store_true",
        help="export only the events that --labels labels",
    )
    export.add_argument(
        "--max-samples", type=int, metavar="N", help="stop after N samples (default: all)"
    )
    add_config_flag(export)


_OUT_HELP = "output directory (created if needed; files of an earlier run are replaced)"


def cmd_dataset(args: argparse.Namespace) -> int:
    """Run the `dataset` command named by args.dataset_command."""
    return COMMANDS[args.dataset_command](args)


def cmd_build(args: argparse.Namespace) -> int:
    from moderator.logs import configure_cli_logging
    from moderator.settings import load_settings
    from moderator.training.build import BuildOptions, parse_split
    from moderator.training.build_run import BuildRequest, run_build

    options = BuildOptions(
        ratios=parse_split(args.split),
        seed=args.seed,
        augment=args.augment,
        oversample=args.oversample,
    )
    if not args.manifest.is_file():
        raise ConfigError(f"MANIFEST: {args.manifest} is not a file")
    settings = load_settings(args.config, {"policies.dir": args.policies})
    configure_cli_logging(settings.log)
    request = BuildRequest(
        manifest=args.manifest,
        out=args.out,
        options=options,
        tenant=args.tenant,
        skip_bad=args.skip_bad,
        min_side=args.min_side,
    )
    return run_build(request, settings)


def cmd_from_audit(args: argparse.Namespace) -> int:
    from moderator.audit.read.filters import BadFilter, build_query
    from moderator.cli.audit_query import open_existing_store
    from moderator.fetch.decode import DecodeLimits
    from moderator.fetch.s3 import S3ObjectStore
    from moderator.logs import configure_cli_logging
    from moderator.settings import load_settings
    from moderator.training import from_audit as fa
    from moderator.training.build_run import check_out

    try:
        query = build_query(filter_values(args))
    except BadFilter as exc:
        raise ConfigError(f"{flag_name(exc.field)}: {exc.reason_naming(flag_name)}") from exc
    if args.max_samples is not None and args.max_samples < 1:
        raise ConfigError(f"--max-samples: must be at least 1, got {args.max_samples}")
    if args.labelled_only and args.labels is None:
        raise ConfigError("--labelled-only: needs --labels FILE")
    check_out(args.out)
    labels = fa.read_labels(args.labels) if args.labels is not None else None
    options = fa.ExportOptions(labels, args.labelled_only, args.max_samples)
    settings = load_settings(args.config)
    configure_cli_logging(settings.log)
    with open_existing_store(settings.audit.url) as store:
        (args.out / fa.IMAGES).mkdir(parents=True, exist_ok=True)
        exporter = fa.Exporter(
            args.out,
            S3ObjectStore(settings.s3),
            limits=DecodeLimits.from_settings(settings.fetch),
            max_bytes=settings.fetch.max_object_bytes,
        )
        progress = fa.ExportProgress(sys.stderr)
        result = fa.export(
            fa.query_rows(store, query),
            exporter,
            options,
            workers=settings.fetch.concurrency,
            progress=fa.progress_line(progress),
        )
        fa.finish_line(progress, result)
    fa.write_export(args.out, result, query, options)
    if result.skipped:
        line = fa.skipped_line(result.skipped, args.out / fa.SKIPPED_FILE)
        print(f"moderator: {line}", file=sys.stderr)
    print(f"{counted(len(result.samples), 'sample')} -> {args.out / fa.DATASET_FILE}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "build": cmd_build,
    "from-audit": cmd_from_audit,
    "rationales": cmd_rationales,
}
