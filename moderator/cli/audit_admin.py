"""`moderator audit verify | retention`, and the registration of `serve` and `hash-token`
(cli/audit_serve.py).

verify exits 0 when every chain is intact, 3 when tampering was found, 1 when it could not
verify (database unreachable, anchor unreadable); retention exits 0, 1 or 2 as usual.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moderator.cli.style import add_command, add_config_flag, examples
from moderator.errors import ConfigError, ModeratorError
from moderator.text import safe_line
from moderator.words import counted

if TYPE_CHECKING:
    from moderator.audit.db.store import AuditStore
    from moderator.audit.integrity.verify import VerifyReport
    from moderator.audit.models import Anchor
    from moderator.settings import Settings

EXIT_UNVERIFIABLE = 1


def add_admin_parsers(audit_sub: Any) -> None:
    """Register `audit verify`, `audit retention`, `audit serve` and `audit hash-token`."""
    from moderator.cli.audit_serve import add_serve_parsers

    verify = add_command(
        audit_sub,
        "verify",
        help="check every hash chain against its head and the latest exported anchor",
        epilog=examples(
            "moderator audit verify --config settings.yaml",
            "moderator audit verify --anchor-file anchors.jsonl",
            "moderator audit verify --anchor-s3 s3://audit-anchors/moderator/",
        ),
        description=(
            "Walk every (topic, partition) hash chain of the audit store and hold it to its "
            "recorded head and to the latest anchor (from --anchor-file / --anchor-s3, else "
            "audit.anchor_file / audit.anchor_s3_uri). Exit 0 intact, 3 tampering found, "
            "1 could not verify (database unreachable, anchor unreadable), 2 bad settings or "
            "flags."
        ),
    )
    source = verify.add_mutually_exclusive_group()
    source.add_argument("--anchor-file", type=Path, metavar="FILE", help="anchor file (JSON lines)")
    source.add_argument("--anchor-s3", metavar="s3://BUCKET/PREFIX", help="anchor objects")
    add_config_flag(verify)

    retention = add_command(
        audit_sub,
        "retention",
        help="redact records older than audit.retention_days; print counts per tenant",
        epilog=examples(
            "moderator audit retention --dry-run --config settings.yaml",
            "moderator audit retention --config settings.yaml",
        ),
        description=(
            "Clear the record and object key of rows decided more than audit.retention_days "
            "days ago (per tenant; 'default' for the others). Hashes stay, so chains still "
            "verify. --dry-run only counts (it reads every expired row, redacted ones too)."
        ),
    )
    retention.add_argument("--dry-run", action="store_true", help="count, change nothing")
    add_config_flag(retention)

    add_serve_parsers(audit_sub)


# -- verify --------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    from moderator.audit.integrity.verify import verify
    from moderator.cli.audit_query import open_existing_store
    from moderator.settings import load_settings

    settings = load_settings(args.config)
    try:
        anchor, where = _load_anchor(settings, args.anchor_file, args.anchor_s3)
        with open_existing_store(settings.audit.url) as store:
            report = verify(store, anchor, _verify_progress())
            url = store.url
    except ConfigError:
        raise
    except ModeratorError as exc:
        print(f"moderator: could not verify: {exc}", file=sys.stderr)
        return EXIT_UNVERIFIABLE
    _print_report(report, url, where)
    return report.exit_code


def _verify_progress() -> Callable[[int, int, int, str], None]:
    """`verify: N rows checked, chain C of T (topic[p]), S s` on stderr (moderator.cli.progress)."""
    from moderator.cli.progress import reporter

    return reporter(
        lambda rows, number, chains, chain, s: (
            f"verify: {rows:,} rows checked, chain {number} of {chains} "
            f"({safe_line(chain)}), {s:.0f} s"
        )
    )


def _load_anchor(
    settings: Settings, anchor_file: Path | None, anchor_s3: str | None
) -> tuple[Anchor | None, str | None]:
    """The latest anchor and where it came from; (None, None) when no source is configured.
    A configured source without a readable anchor raises AuditError (could not verify)."""
    from moderator.audit.errors import AuditError
    from moderator.audit.integrity.anchors import read_latest

    audit = settings.audit
    if anchor_file is None and anchor_s3 is None:
        anchor_file, anchor_s3 = audit.anchor_file, audit.anchor_s3_uri
    if anchor_file is not None:
        where = f"file {anchor_file}"
        try:
            anchor, skipped = read_latest(anchor_file)
        except FileNotFoundError as exc:
            raise AuditError(f"anchor {where}: no such file") from exc
        except OSError as exc:
            raise AuditError(f"anchor {where}: {exc.strerror or exc}") from exc
        if anchor is not None and skipped:
            print(
                f"moderator: warning: anchor {where}: the last {skipped} line(s) are not anchors "
                "(a write cut short by a crash, or damage); verifying against the anchor created "
                f"{anchor.created_at.isoformat()}, before them",
                file=sys.stderr,
            )
    elif anchor_s3 is not None:
        where = anchor_s3
        anchor = _latest_s3_anchor(settings, anchor_s3)
    else:
        note = " (audit.anchor_topic cannot be read back here)" if audit.anchor_topic else ""
        print(
            "moderator: warning: no anchor file or S3 prefix configured: truncation and wholesale "
            f"recomputation cannot be detected{note}",
            file=sys.stderr,
        )
        return None, None
    if anchor is None:
        raise AuditError(f"no anchor found in {where}")
    return anchor, where


def _latest_s3_anchor(settings: Settings, uri: str) -> Anchor | None:
    from botocore.exceptions import BotoCoreError, ClientError

    from moderator.audit.errors import AuditError
    from moderator.audit.integrity.anchors import S3AnchorSink, parse_s3_uri
    from moderator.fetch.s3 import build_s3_client

    bucket, prefix = parse_s3_uri(uri)
    try:
        return S3AnchorSink(build_s3_client(settings.s3), bucket, prefix).latest()
    except (BotoCoreError, ClientError, ValueError) as exc:
        raise AuditError(f"anchor {uri}: {exc}") from exc


def _print_report(report: VerifyReport, url: str, where: str | None) -> None:
    from moderator.audit.integrity.verify import MAX_LISTED
    from moderator.cli.policy import table

    print(f"audit store: {url}")
    if report.anchor is not None:
        created = report.anchor.created_at.isoformat().replace("+00:00", "Z")
        print(f"anchor: {where}, created {created}, {len(report.anchor.heads)} chain heads")
    anchored = {(h.topic, h.partition): h.seq for h in report.anchor.heads} if report.anchor else {}
    heads = {(h.topic, h.partition): h.seq for h in report.heads}
    broken = {
        (p.topic, p.partition)
        for p in report.problems
        if p.topic is not None and p.partition is not None
    }
    rows = [
        (
            f"{topic}[{partition}]",
            str(heads.get((topic, partition), "-")),
            str(anchored.get((topic, partition), "-")),
            "TAMPERED" if (topic, partition) in broken else "ok",
        )
        for topic, partition in sorted(set(heads) | set(anchored) | broken)
    ]
    for line in table(("chain", "head_seq", "anchor_seq", "status"), rows):
        print(line)
    found = len(report.problems) + report.unlisted
    print(
        f"{report.chains} chains, {report.rows_checked} rows checked "
        f"({report.rows_redacted} redacted), {counted(found, 'problem')}"
    )
    for problem in report.problems:
        print(f"problem: {problem}")
    if report.unlisted:
        print(
            f"note: {counted(report.unlisted, 'more problem')} not listed "
            f"(the first {MAX_LISTED} of each chain are)"
        )
    print("intact" if report.ok else "TAMPERING FOUND")
    if report.rows_legacy:
        legacy, uncovered = report.rows_legacy, report.rows_uncovered
        kept = (
            f", nor the kept columns (decision, tenant, time, ...) of the {uncovered} redacted "
            "among them"
            if uncovered
            else ""
        )
        print(
            f"moderator: warning: {counted(legacy, 'row')} "
            f"{'predates' if legacy == 1 else 'predate'} schema version 3 (chain format v1): "
            "the hash chain does not cover their offset"
            f"{kept}",
            file=sys.stderr,
        )


# -- retention -----------------------------------------------------------------------------


def cmd_retention(args: argparse.Namespace) -> int:
    from moderator.audit.db.retention import redact_expired
    from moderator.cli.audit_query import open_existing_store
    from moderator.cli.policy import table
    from moderator.settings import load_settings

    settings = load_settings(args.config)
    policy = settings.audit.retention_days
    if not policy:
        print("audit.retention_days is not set: records are kept forever", file=sys.stderr)
        return 0
    now = datetime.now(UTC)
    with open_existing_store(settings.audit.url, write=not args.dry_run) as store:
        if args.dry_run:
            counts = expired_counts(store, policy, now)
        else:
            counts = redact_expired(store, dict(policy), now, _retention_progress())
    label = "would redact" if args.dry_run else "redacted"
    rows = [(tenant, str(n)) for tenant, n in sorted(counts.items())]
    rows.append(("total", str(sum(counts.values()))))
    for line in table(("tenant", label), rows):
        print(line)
    return 0


def _retention_progress() -> Callable[[str, int, int, int], None]:
    """`retention: kids done, 12,345 rows redacted so far, step 2 of 5, 9 s` on stderr
    (moderator.cli.progress)."""
    from moderator.cli.progress import reporter

    return reporter(
        lambda entry, rows, number, steps, s: (
            f"retention: {safe_line(entry)} done, {rows:,} rows redacted so far, "
            f"step {number} of {steps}, {s:.0f} s"
        )
    )


def expired_counts(store: AuditStore, policy: Mapping[str, int], now: datetime) -> dict[str, int]:
    """Rows `redact_expired` would redact now, per tenant (read-only; pages through the rows
    decided before each cutoff)."""
    from dataclasses import replace

    from moderator.audit.db.retention import DEFAULT_KEY, cutoff
    from moderator.audit.models import AuditQuery

    named = {t: d for t, d in policy.items() if t != DEFAULT_KEY}
    plans = [
        (AuditQuery(tenant=t, until=cutoff(now, t, d), limit=1000), False) for t, d in named.items()
    ]
    if DEFAULT_KEY in policy:
        until = cutoff(now, DEFAULT_KEY, policy[DEFAULT_KEY])
        plans.append((AuditQuery(until=until, limit=1000), True))
    counts: dict[str, int] = {}
    for query, is_default in plans:
        q: AuditQuery | None = query
        while q is not None:
            page = store.query(q)
            for row in page.rows:
                if row.redacted_at is None and not (is_default and row.tenant_id in named):
                    counts[row.tenant_id] = counts.get(row.tenant_id, 0) + 1
            q = replace(q, cursor=page.next_cursor) if page.next_cursor else None
    return counts
