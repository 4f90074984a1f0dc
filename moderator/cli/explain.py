"""`moderator explain EVENT_ID`: why a verdict was decided, read from the audit store.

Prints the decision path of one event: the input, the policy version and its decision-table row
for the category (or its on_error rule), which file or surface override set that row (when the
policy directory, policies.dir or `--policies DIR`, still compiles to that version; otherwise
why not), the engine's answer or the error, the rule
that decided, and the decision; `--format json` prints the same as a `moderator.explanation/v1`
document (docs/explain.md). Exit codes: 0 explained, 1 no audit record has the event id or the
audit database cannot be opened, 2 a bad argument or bad settings.

Also here: the `because` cells of the demo's verdict table, from the same explain core.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

# cheap: the policy directory is read on use; the audit API attaches row_origin with it too
from moderator.audit.read.row_origin import with_origin
from moderator.cli.style import (
    add_command,
    add_config_flag,
    add_format_flag,
    add_policies_flag,
    examples,
    policies_left_unset,
)
from moderator.errors import ConfigError

if TYPE_CHECKING:
    from moderator.policy.base import PolicyProvider

FORMATS = ("text", "json")
# DLQ records carry the message as it was sent and its source offset, not an event id.
NO_RECORD_HINT = (
    "a message that could not be parsed gets none: it goes to the DLQ topic (kafka.topics.dlq), "
    "whose records name its source partition and offset, not an event id"
)
DEMO_POLICIES = files("moderator") / "data" / "demo-policies"
DESCRIPTION = (
    "Explain why the verdict of EVENT_ID was decided, from its audit record in the audit store "
    "(audit.url: --config FILE or MODERATOR_AUDIT__URL): the input, the policy version and "
    "what its decision table says for the category (or its on_error rule), which policy file "
    "set that row (read from --policies DIR, default policies.dir, while it still compiles to "
    "the verdict's policy version; otherwise the output says why), the engine's rating, "
    "category, score and rationale (or the error and its code), the rule that decided, and the "
    "decision. A record redacted by retention is explained from the columns the store keeps, "
    "and the output says what is missing. Exit 0 explained, 1 no record has the event id (or "
    "the database cannot be opened), 2 bad arguments or settings."
)
EXAMPLES = examples(
    "moderator explain demo-1a2b3c4d-0001",
    "moderator explain a-1 --format json --config settings.yaml",
    "MODERATOR_AUDIT__URL=postgresql://audit@db/audit moderator explain a-1",
    "moderator explain a-1 --policies policies-2026-11",
)


def add_explain_parser(sub: Any) -> None:
    """Register `explain` on the top-level subparsers."""
    p = add_command(
        sub,
        "explain",
        help="explain why an event's verdict was decided (from the audit store)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    p.add_argument("event_id", metavar="EVENT_ID", help="the upload event id")
    add_format_flag(
        p,
        FORMATS,
        default="text",
        help="text: one line per step; json: a moderator.explanation/v1 document",
    )
    add_policies_flag(p)
    add_config_flag(p)


def cmd_explain(args: argparse.Namespace) -> int:
    """Run `explain` with parsed arguments."""
    from moderator.audit.errors import AuditError
    from moderator.audit.models import text_problem
    from moderator.audit.read.filters import shown
    from moderator.cli.audit_query import open_existing_store
    from moderator.explain.lookup import explain_event
    from moderator.explain.render import explanation_json, text_lines
    from moderator.logs import configure_cli_logging
    from moderator.settings import load_settings
    from moderator.text import json_text

    event_id: str = args.event_id
    problem = text_problem(event_id)
    if problem is not None:
        raise ConfigError(f"EVENT_ID: {problem}")
    if args.policies is not None and not args.policies.is_dir():
        # Given on purpose, so a typo is an error rather than an origin quietly not shown.
        raise ConfigError(f"policies.dir: {args.policies} is not a directory")
    settings = load_settings(args.config, {"policies.dir": args.policies})
    configure_cli_logging(settings.log)
    with open_existing_store(settings.audit.url) as store:
        explanation = explain_event(store, event_id)
        if explanation is None:
            raise AuditError(
                f"no audit record for event {shown(event_id)} in {store.url}; {NO_RECORD_HINT}"
            )
    told = with_origin(explanation, settings.policies.dir, settings.tenancy)
    if policies_left_unset(args, settings) and not settings.policies.dir.is_dir():
        told = _demo_origin(explanation) or _demo_tried(told)
    elif told.policy.origin_not_shown is not None:
        told = _without_tenant_file(explanation, told, settings)
    if args.format == "json":
        print(json_text(explanation_json(told), indent=2))
    else:
        for line in text_lines(told):
            print(line)
    return 0


def _without_tenant_file(explanation: Any, told: Any, settings: Any) -> Any:
    """`told`, its reason for showing no origin saying that policies.dir has no policy file
    for the verdict's tenant, when it has none (the version it compiles the tenant to as one
    without a file says nothing of the files that decided); `told` unchanged otherwise, and
    when the directory is unusable or its default.yaml does not load (said first)."""
    from moderator.audit.read.row_origin import checked, not_shown

    directory = settings.policies.dir
    result = checked(directory, settings.tenancy)[0]
    tenant = explanation.tenant_id
    if result is None or "default" not in result.files or tenant in result.paths:
        return told
    reason = f"policies.dir ({directory}) has no policy file for {tenant}"
    if explanation.policy.version in bundled_demo_documents():
        hint = demo_hint().replace("{", "{{").replace("}", "}}")  # `not_shown` formats it
        return not_shown(explanation, reason, hint)
    return not_shown(explanation, reason)


def demo_hint() -> str:
    """What to pass for a verdict `moderator demo` decided, where its policies are not."""
    return (
        f"`moderator demo` decided it under its bundled policies: pass --policies {DEMO_POLICIES}"
    )


def _demo_origin(explanation: Any) -> Any:
    """`explanation` with its row origin from the bundled demo policies when they compile to
    its version (a verdict `moderator demo` decided, explained where it ran: policies.dir is
    left at its default, and there is no such directory there); None otherwise."""
    from importlib.resources import as_file, files

    from moderator.settings import TenancySettings

    with as_file(files("moderator") / "data" / "demo-policies") as directory:
        found = with_origin(explanation, Path(directory), TenancySettings())
    return found if found.policy.row_origin is not None else None


def _demo_tried(explanation: Any) -> Any:
    """`explanation`, its reason for showing no origin saying that the bundled demo policies
    were tried too."""
    from dataclasses import replace

    note = explanation.policy.origin_not_shown
    if note is None:
        return explanation
    reason, _, hint = note.partition("; ")
    tried = f"{reason}, and the bundled demo policies, tried instead, did not decide it; {hint}"
    return replace(explanation, policy=replace(explanation.policy, origin_not_shown=tried))


# -- the demo's verdict table --------------------------------------------------------------


def verdict_reasons(
    verdicts: Sequence[Mapping[str, Any]],
    documents: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """The `because` cell of each Verdict v1 document. `documents` maps policy versions to
    compiled policy documents (default: the bundled demo policies); a verdict whose version is
    not among them is explained without its decision table."""
    from moderator.explain.build import explain_verdict
    from moderator.explain.render import because

    known = bundled_demo_documents() if documents is None else documents
    out = []
    for verdict in verdicts:
        policy = verdict.get("policy")
        version = policy.get("version") if isinstance(policy, Mapping) else None
        try:
            out.append(because(explain_verdict(verdict, known.get(str(version)))))
        except ValueError:
            out.append("-")
    return out


def bundled_demo_documents() -> dict[str, dict[str, Any]]:
    """Every compiled policy document of the bundled demo policies, by version."""
    from importlib.resources import as_file, files

    from moderator.policy.check import check
    from moderator.settings import TenancySettings

    with as_file(files("moderator") / "data" / "demo-policies") as directory:
        result = check(Path(directory), TenancySettings())
    return {p.version: p.document() for p in result.policies.values()}


def provider_documents(
    verdicts: Sequence[Mapping[str, Any]], policies: PolicyProvider
) -> dict[str, dict[str, Any]]:
    """The compiled policy documents a running pipeline's policies give the verdicts, by
    version (only where the version still matches the verdict's)."""
    out: dict[str, dict[str, Any]] = {}
    for verdict in verdicts:
        ref = verdict.get("policy")
        if not isinstance(ref, Mapping):
            continue
        policy = policies.resolve(str(ref.get("tenant_id")), str(ref.get("surface")))
        if policy is not None and policy.version == ref.get("version"):
            out[policy.version] = policy.document()
    return out
