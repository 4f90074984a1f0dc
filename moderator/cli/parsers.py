"""The parsers of `run`, `demo`, `scan`, `policy`, the `audit` group with `audit sink`, and
`model`: descriptions, examples and flags in the shared style (moderator/cli/style.py).

Cheap to import: the commands themselves import what they need when they run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from moderator.cli.style import (
    TENANT_METAVAR,
    add_command,
    add_config_flag,
    add_engine_flag,
    add_engine_flags,
    add_format_flag,
    add_group,
    add_output_flag,
    add_policies_flag,
    examples,
)

EXIT_CODES = "Exit 0 on success, 1 on a runtime failure, 2 on a usage or configuration error."


def add_run_parser(sub: Any) -> None:
    run = add_command(
        sub,
        "run",
        help="consume uploads and publish verdicts until SIGTERM/SIGINT",
        description=(
            "Consume upload events from kafka.topics.uploads, fetch each object from S3, judge "
            "it with the engine (engine.kind), decide with the tenant's policy and publish the "
            "verdict and its audit record exactly once (kafka.delivery). Serves /metrics, "
            "/healthz and /readyz on http.port. Runs until SIGTERM or SIGINT, drains for "
            "flow.drain_grace_s, checkpoints and exits 0. The engine's checkpoint directory is "
            "checked before the broker is contacted. Exit 2 when the settings are invalid, the "
            "engine cannot be built or the broker cannot be reached within "
            "kafka.startup_timeout_s; 1 on a runtime failure. With --check: check the settings, "
            "Kafka, S3, the engine and the policies, print a table and exit."
        ),
        epilog=examples(
            "moderator run --config settings.yaml",
            "MODERATOR_ENGINE__BASE_URL=http://127.0.0.1:23333/v1 moderator run --engine openai "
            "--model qwenguard-3b",
            "moderator run --check --config settings.yaml",
            "moderator run --with-audit-sink --engine fake --policies policies",
            "moderator run --workers 4 --config settings.yaml",
        ),
    )
    add_engine_flags(run)
    add_config_flag(run)
    add_policies_flag(run)
    run.add_argument(
        "--with-audit-sink",
        action="store_true",
        help="also run the audit sink in this process (single-process deployments)",
    )
    run.add_argument(
        "--check",
        action="store_true",
        help="check the settings, Kafka, S3, the engine and the policies, print a table and "
        "exit: 0 when all pass, 2 when any fails (consumes and produces nothing)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N consumer processes in the consumer group under a supervisor that forwards "
        "SIGTERM/SIGINT (default: 1, this process alone); worker k has instance_id "
        "{instance_id}-w{k} and serves on http.port + k (docs/performance.md)",
    )
    # Set by the supervisor on each worker it starts (moderator/cli/workers.py).
    run.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    add_http_port_flag(run)


def add_demo_parser(sub: Any) -> None:
    demo = add_command(
        sub,
        "demo",
        help="run everything embedded on sample images, print verdicts",
        description=(
            "Start an embedded Kafka broker and S3 server in this process, upload generated "
            "sample images for the tenants acme, kidsplace and museum (plus a corrupt image, a "
            "missing object and a malformed message), moderate them through the real pipeline "
            "and print one line per verdict: decision, assessment or error, score, the rule "
            "that decided and the source. The bundled demo policies decide unless --policies "
            "DIR names others. The settings, the engine's checkpoint directory, the policies "
            "and the port of /metrics, /healthz and /readyz (--http-port) are checked before "
            "anything starts. Exit 0 when every verdict arrived, 1 when some did not or the "
            "pipeline failed, 2 on a usage or configuration error."
        ),
        epilog=examples(
            "moderator demo --engine fake",
            "moderator demo --engine fake --events 100",
            "moderator demo --engine transformers --model ./tiny",
            "moderator demo --policies policies --config settings.yaml",
        ),
    )
    add_engine_flags(demo)
    demo.add_argument(
        "--events", type=int, default=24, metavar="N", help="sample uploads to moderate"
    )
    add_config_flag(demo)
    add_policies_flag(demo)
    add_http_port_flag(demo)


def add_scan_parser(sub: Any) -> None:
    from moderator.pipeline.scan_output import FORMATS

    scan = add_command(
        sub,
        "scan",
        help="classify a local folder or an S3 prefix offline; one verdict per object",
        description=(
            "Classify every regular file under PATH (walked recursively in name order; hidden "
            "files and folders, names starting with '.', are skipped), a single file, or every "
            "object under s3://bucket/prefix, with a tenant's policy. Writes one Verdict v1 JSON "
            "object per line (--format jsonl) or one CSV row per verdict (--format csv, columns "
            "in docs/scan.md); progress, then a summary by decision and error code, go to "
            "stderr. The settings, the engine's checkpoint directory, the policies and --output "
            "are checked before the engine is loaded. Verdicts are decided under the tenant's "
            "top-level policy (a scan has no surface). Exit 0 when every object got a verdict "
            "(error verdicts included), 1 on a runtime failure or when some file or folder could "
            "not be read, 2 on a usage or config error, 130 on Ctrl-C (the summary is printed "
            "and the verdicts written are kept)."
        ),
        epilog=examples(
            "moderator scan ./photos --engine fake --policies policies",
            "moderator scan ./photos --format csv --output verdicts.csv",
            "moderator scan s3://uploads/acme/2026/ --tenant acme > acme.jsonl",
        ),
    )
    scan.add_argument("target", metavar="PATH|s3://bucket/prefix", help="what to scan")
    scan.add_argument(
        "--tenant",
        metavar=TENANT_METAVAR,
        help="tenant whose policy decides (default: 'default'); "
        "a tenant without a policy file gets the default policy",
    )
    add_engine_flags(scan)
    add_format_flag(
        scan,
        FORMATS,
        default=FORMATS[0],
        help="jsonl: one Verdict v1 JSON object per line; csv: a header, then one row per verdict",
    )
    add_output_flag(scan)
    add_config_flag(scan)
    add_policies_flag(scan)


def add_policy_parser(sub: Any) -> None:
    policy_sub = add_group(
        sub,
        "policy",
        help="check, show and compare tenant policies",
        description=(
            "Tenant policies are YAML files in one directory (policies.dir): default.yaml and "
            "one file per tenant (docs/policies.md). validate checks every file, render shows "
            "one tenant's compiled prompt and decision table, diff compares two directories."
        ),
        epilog=examples(
            "moderator policy validate policies",
            "moderator policy render kids --surface profile_photo --policies policies",
            "moderator policy diff policies policies-next",
        ),
        dest="policy_command",
    )
    validate = add_command(
        policy_sub,
        "validate",
        help="load every file and compile every tenant and surface; list problems",
        description=(
            "Load every *.yaml and *.yml in DIR and compile each tenant for its default surface "
            "and every surface it declares. DIR is the positional argument or --policies DIR "
            "(default: policies.dir). Prints `tenant surface version` per policy and exits "
            "0, or prints every problem as `path:line: reason` on stderr and exits 2. With "
            "--engine E, also prints a warning line on stderr for each tenant whose policy acts "
            "on categories engine E can never raise (exit code still 0). Given a FILE instead "
            "of a directory, checks that file's tenant against the other files of its "
            "directory, or of --policies DIR (the file taking the place of that tenant's), "
            "and reports only its own chain's problems: a new file before it is copied in."
        ),
        epilog=examples(
            "moderator policy validate policies",
            "moderator policy validate new/acme.yaml --policies policies",
            "moderator policy validate --policies policies --engine nudenet",
            "moderator policy validate --config settings.yaml",
        ),
    )
    validate.add_argument(
        "directory",
        nargs="?",
        type=Path,
        metavar="DIR|FILE",
        help="policy directory, or one policy file (default: --policies, else policies.dir)",
    )
    add_policies_flag(validate)
    add_config_flag(validate)
    add_engine_flag(validate)
    render = add_command(
        policy_sub,
        "render",
        help="print a tenant's compiled prompt and decision table",
        description=(
            "Compile TENANT's policy for a surface and print its header (version, hashes, "
            "inheritance chain), the prompt exactly as the model receives it, the decision "
            "table, the on_error rules and the allowed locations. A tenant without a policy "
            "file gets the default policy when policies.default_for_unknown is on. Exit 0, or "
            "2 when the tenant's policy does not compile or the tenant is unknown."
        ),
        epilog=examples(
            "moderator policy render kids --policies policies",
            "moderator policy render kids --surface profile_photo --format json",
        ),
    )
    render.add_argument("tenant", metavar="TENANT", help="tenant id (its file name without .yaml)")
    render.add_argument("--surface", metavar="S", help="context.surface (default: none)")
    add_policies_flag(render)
    add_config_flag(render)
    add_format_flag(
        render,
        ("text", "json"),
        default="text",
        help="text: for people; json: the compiled policy and decision table as one document",
    )
    diff = add_command(
        policy_sub,
        "diff",
        help="compare two policy directories tenant by tenant and surface by surface",
        description=(
            "Compile both directories and print, per tenant and surface, what changes from "
            "OLD_DIR to NEW_DIR: the version, each decision-table and on_error change, and "
            "whether the prompt changed; then one summary line. Exit 0 (differences "
            "included), 2 when a directory is missing or has problems (listed on stderr)."
        ),
        epilog=examples(
            "moderator policy diff policies policies-next",
            "moderator policy diff old/ new/ --config settings.yaml",
        ),
    )
    diff.add_argument("old", type=Path, metavar="OLD_DIR", help="the policies in force now")
    diff.add_argument("new", type=Path, metavar="NEW_DIR", help="the policies to compare")
    add_config_flag(diff)


def add_audit_parser(sub: Any) -> Any:
    """The `audit` group with `audit sink`; returns its subparsers for the other commands."""
    audit_sub = add_group(
        sub,
        "audit",
        help="the audit store: sink, queries, verification, exports",
        description=(
            "The audit store (audit.url: SQLite or PostgreSQL) keeps one hash-chained record "
            "per verdict (docs/audit.md). sink writes the audit topic into it; query, verify, "
            "retention, serve and export-dsa read or maintain it."
        ),
        epilog=examples(
            "moderator audit sink --config settings.yaml",
            "moderator audit query --tenant acme --decision block --since 2026-11-01",
            "moderator audit verify --anchor-file anchors.jsonl",
        ),
        dest="audit_command",
    )
    sink = add_command(
        audit_sub,
        "sink",
        help="write the audit topic into the audit store until SIGTERM/SIGINT",
        description=(
            "Consume kafka.topics.audit (group audit.sink_group_id, default "
            "{kafka.group_id}-audit-sink) into the store at audit.url in batches of "
            "audit.batch_size, committing offsets after each database commit; export chain-head "
            "anchors every audit.anchor_every_s to the configured destinations. Exit 0 on "
            "SIGTERM/SIGINT, 1 on a runtime failure, 2 on a configuration error."
        ),
        epilog=examples(
            "moderator audit sink --config settings.yaml",
            "moderator audit sink --http-port 9401",
        ),
    )
    add_config_flag(sink)
    add_http_port_flag(sink)
    return audit_sub


def add_model_parser(sub: Any, arches: tuple[str, ...]) -> None:
    model_sub = add_group(
        sub,
        "model",
        help="model checkpoint tools",
        description="Tools for engine checkpoints. Weights are never downloaded.",
        epilog=examples("moderator model make-tiny ./tiny --arch qwen2-vl"),
        dest="model_command",
    )
    tiny = add_command(
        model_sub,
        "make-tiny",
        help="write a tiny random-weight checkpoint for smoke tests (no downloads)",
        description=(
            "Write a tiny checkpoint of the given architecture with random weights to "
            "DIRECTORY and print its path. It loads with engine.kind=transformers; its verdicts "
            "carry model.smoke_test: true and mean nothing. Needs the transformers extra. "
            + EXIT_CODES
        ),
        epilog=examples(
            "moderator model make-tiny ./tiny",
            "moderator model make-tiny ./tiny-qwen --arch qwen2-vl --seed 3",
        ),
    )
    tiny.add_argument(
        "directory", type=Path, metavar="DIRECTORY", help="where to write the checkpoint"
    )
    tiny.add_argument(
        "--arch",
        choices=arches,
        default=arches[0],
        metavar="|".join(arches),
        help=f"model architecture (default: {arches[0]})",
    )
    tiny.add_argument(
        "--seed", type=int, metavar="N", default=0, help="weight seed (same seed, same bytes)"
    )


def add_http_port_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--http-port",
        type=int,
        metavar="N",
        help="serve /metrics, /healthz and /readyz on port N (http.port, default 9400; 0 = off)",
    )
