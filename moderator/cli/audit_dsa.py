"""`moderator audit export-dsa`: restricting decisions → DSA statements of reasons, JSON lines.

Exit codes: 0 ok (no statements included), 2 for a missing PUID salt, a bad flag value or bad
settings, 1 when the audit database cannot be read or a record cannot become a valid statement
(the line names the event and the problem; nothing is written then).
"""

from __future__ import annotations

import heapq
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from moderator.cli.dsa_rows import Exporter
from moderator.errors import ConfigError
from moderator.paths import file_problem
from moderator.text import json_text
from moderator.words import counted

if TYPE_CHECKING:
    from moderator.audit.db.store import AuditStore
    from moderator.audit.dsa.export import DsaOptions
    from moderator.audit.models import AuditQuery, AuditRow
    from moderator.settings import Settings

SALT_ENV = "MODERATOR_DSA_PUID_SALT"
PAGE = 1000
SPOOL_BYTES = 16 << 20
# The decisions that can restrict content; `allow` ones are never read.
RESTRICTING = ("block", "review")
# Skip reason -> (one, several) in the summary.
SKIPPED = {
    "smoke_test": ("decision of a smoke-test model", "decisions of a smoke-test model"),
    "review_visible": (
        "review that keeps the content visible",
        "reviews that keep the content visible",
    ),
    "no_content": (
        "error decision about no content of the tenant",
        "error decisions about no content of the tenant",
    ),
}


def add_dsa_parser(audit_sub: Any) -> None:
    """Register `audit export-dsa` on the `audit` subparsers."""
    from moderator.cli.audit_query import add_filter_flags
    from moderator.cli.style import (
        add_command,
        add_config_flag,
        add_output_flag,
        add_policies_flag,
        examples,
    )

    p = add_command(
        audit_sub,
        "export-dsa",
        help="write DSA statements of reasons for decisions that restrict content (JSON lines)",
        epilog=examples(
            f"{SALT_ENV}=... moderator audit export-dsa --since 2026-11-01 --until 2026-12-01",
            "moderator audit export-dsa --tenant acme --output acme.jsonl --terms-url "
            "https://example.com/terms",
            "moderator audit export-dsa --event-id 7f3c9e2a-upload-1",
        ),
        description=(
            "Turn every block decision (and review decisions of tenants whose policy sets "
            "dsa.review_restricts_visibility) decided in [--since, --until) into an EU DSA "
            "Transparency Database statement of reasons (schema of 1 July 2025), one JSON object "
            "per line, oldest first; every 100 lines make one POST /api/v1/statements body. "
            "The filter flags are those of audit query. Decisions of a smoke-test model are "
            "skipped unless --include-smoke-test. "
            f"The PUID salt is read from ${SALT_ENV} (or --salt-env). A summary goes to stderr. "
            "Exit 0 ok, 2 missing salt or bad flag value, 1 unreadable store or invalid statement."
        ),
    )
    # Every filter of the table, as `audit query` has them: a reviewer finds the statement of
    # one upload by --event-id rather than recomputing its PUID.
    add_filter_flags(
        p,
        helps={
            "tenant": "one tenant only (default: every tenant)",
            "decision": "block or review only (default: both; allow decisions are never exported)",
        },
    )
    add_output_flag(p)
    p.add_argument(
        "--salt-env", default=SALT_ENV, metavar="NAME", help=f"PUID salt variable ({SALT_ENV})"
    )
    p.add_argument(
        "--territorial-scope",
        default="EU",
        metavar="EU|EEA|CODES",
        help="EU (the 27 member states, default), EEA (adds IS, LI, NO) or codes like DE,AT",
    )
    p.add_argument("--terms-url", metavar="URL", help="decision_ground_reference_url (your ToS)")
    p.add_argument(
        "--ground-text", metavar="TEXT", help="incompatible_content_ground text (not blank)"
    )
    p.add_argument(
        "--content-language",
        metavar="XX",
        help="content_language: an ISO 639-1 code the database lists, e.g. EN",
    )
    p.add_argument(
        "--include-smoke-test",
        action="store_true",
        help="also export decisions of a smoke-test model (the fake engine, a tiny checkpoint): "
        "meaningless, for testing a submission pipeline end to end only",
    )
    add_config_flag(p)
    add_policies_flag(p)


def cmd_export_dsa(
    settings: Settings,
    *,
    filters: Mapping[str, str | None] | None = None,
    output: Path | None = None,
    salt_env: str = SALT_ENV,
    territorial_scope: str = "EU",
    terms_url: str | None = None,
    ground_text: str | None = None,
    content_language: str | None = None,
    include_smoke_test: bool = False,
    demo_policies: bool = False,
) -> int:
    """Export the statements; see the module docstring for exit codes. `filters` holds the audit
    filters as typed, by field name (`tenant`, `event_id`, ...; None or absent: not given).
    `demo_policies`: `policies.dir` is at its default and missing, so the bundled demo policies
    give the mappings of the decisions `moderator demo` made (and only of those)."""
    from moderator.audit.dsa.export import MIN_SALT_CHARS
    from moderator.logs import configure_cli_logging
    from moderator.policy.registry import PolicyRegistry

    configure_cli_logging(settings.log)  # stdout holds statements only
    salt = os.environ.get(salt_env, "")
    if not salt:
        print(
            f"moderator: audit export-dsa: set {salt_env} to the platform's PUID salt (a secret "
            "of at least 16 characters; keep it: another salt gives every statement a new PUID)",
            file=sys.stderr,
        )
        return 2
    if len(salt) < MIN_SALT_CHARS:
        raise ConfigError(
            f"{salt_env}: too short; the PUID salt needs at least {MIN_SALT_CHARS} characters"
        )
    options = _options(salt, territorial_scope, terms_url, ground_text, content_language)
    queries = _queries(filters or {})
    problem = None if output is None else file_problem(output)
    if problem is not None:  # now, not after the whole store was read
        raise ConfigError(f"--output: {problem}")
    with _policies_dir(settings, demo_policies) as (directory, only_versions):
        # Tolerant: a tenant whose file does not load (an edit in progress) stops the export
        # only when one of its rows is exported, naming the file's problem.
        registry = PolicyRegistry(
            directory,
            settings.tenancy,
            default_for_unknown=settings.policies.default_for_unknown,
            tolerant=True,
        )
        exporter = Exporter(
            registry, options, include_smoke_test=include_smoke_test, policies_dir=directory
        )
        if only_versions is not None:
            exporter.only_versions = (settings.policies.dir, only_versions)
        absent = _export(settings, queries, output, exporter)
    summarise(exporter, output)
    for line in absent:
        print(f"moderator: warning: {line}", file=sys.stderr)
    return 0


@contextmanager
def _policies_dir(
    settings: Settings, demo_policies: bool
) -> Iterator[tuple[Path, frozenset[str] | None]]:
    """The policy directory to read mappings from, and the only policy versions it may map
    (None: any); the bundled demo policies when `demo_policies`."""
    if not demo_policies:
        yield settings.policies.dir, None
        return
    from importlib.resources import as_file, files

    from moderator.cli.explain import bundled_demo_documents

    print(
        f"moderator: {settings.policies.dir} is not a directory: the bundled demo policies map "
        "the decisions `moderator demo` made (pass --policies for any other)",
        file=sys.stderr,
    )
    with as_file(files("moderator") / "data" / "demo-policies") as directory:
        yield Path(directory), frozenset(bundled_demo_documents())


def _export(
    settings: Settings, queries: list[AuditQuery], output: Path | None, exporter: Exporter
) -> list[str]:
    """Write the statements; the warning about a `--tenant` the store has no record of."""
    from moderator.audit.read.cells import PolicyDocuments
    from moderator.cli.audit_query import open_existing_store

    with open_existing_store(settings.audit.url) as store, _output(output) as out:
        exporter.documents = PolicyDocuments(store.policy_version)
        pages = [_rows(store, q) for q in queries]
        # Each page stream is in (decided_at, event_id) order, event ids in the database's
        # collation: merging on the time alone never disagrees with it.
        for row in heapq.merge(*pages, key=lambda r: r.decided_at):
            statement = exporter.statement(row)
            if statement is not None:
                out.write(json_text(statement, separators=(",", ":")) + "\n")
        return absent_tenant(store, queries[0].tenant, exporter.tenants_seen)


def absent_tenant(store: AuditStore, tenant: str | None, seen: set[str]) -> list[str]:
    """A warning when `--tenant` names a tenant the audit store holds no record of (a typo
    would otherwise read as "nothing to report"), naming the store's tenants when they are
    few; [] when it has records, whether or not any restricts."""
    from moderator.audit.models import AuditQuery

    if tenant is None or tenant in seen or store.query(AuditQuery(tenant=tenant, limit=1)).rows:
        return []
    present = store.tenants()
    found = f"; tenants in the store: {', '.join(present)}" if 0 < len(present) <= 10 else ""
    return [f"--tenant {tenant}: the audit store has no record of this tenant{found}"]


def summarise(exporter: Exporter, output: Path | None) -> None:
    """The summary line on stderr."""
    from moderator.audit.dsa.export import SCHEMA_VERSION
    from moderator.audit.dsa.spec import BATCH_MAX

    written = exporter.counts["statements"]
    skipped = ", ".join(counted(exporter.counts[k], *texts) for k, texts in SKIPPED.items())
    dated = exporter.counts["dated_by_decision"]
    first = f" (first: {exporter.first_dated_by_decision})" if dated else ""
    statements = counted(written, "statement of reasons", "statements of reasons")
    smoke = exporter.counts["smoke_test_included"]
    # Said whenever such statements went out, so that a test export is never taken for a real one.
    included = f" ({smoke} by a smoke-test model, --include-smoke-test)" if smoke else ""
    redacted = exporter.counts["redacted"]
    if redacted:  # from the kept columns: dated by their decision, the upload time is gone
        included += (
            f" ({redacted} of redacted records, from the columns retention keeps, dated by "
            "their decision)"
        )
    print(
        f"moderator: {statements}{included} (schema {SCHEMA_VERSION}) in "
        f"{counted(-(-written // BATCH_MAX), 'batch', 'batches')} of at most {BATCH_MAX}"
        f"{f' to {output}' if output else ''}; skipped: {skipped}; "
        f"{dated} with an unusable upload time, dated by their decision{first}",
        file=sys.stderr,
    )


# DsaOptions field -> the flag that sets it, so that a refused value names the flag.
FLAGS = {
    "territorial_scope": "--territorial-scope",
    "decision_ground_reference_url": "--terms-url",
    "incompatible_content_ground": "--ground-text",
    "content_language": "--content-language",
}


def _options(
    salt: str,
    territorial_scope: str,
    terms_url: str | None,
    ground_text: str | None,
    content_language: str | None,
) -> DsaOptions:
    """The export's options from the flags; a value the database would refuse is a ConfigError
    naming its flag. Blank texts count as missing, as the API treats them: a blank
    --terms-url or --content-language is left out, a blank --ground-text is refused."""
    from moderator.audit.dsa.export import DsaOptionError, DsaOptions

    extra = {} if ground_text is None else {"incompatible_content_ground": ground_text}
    try:
        return DsaOptions(
            puid_salt=salt,
            territorial_scope=_scope(territorial_scope),
            decision_ground_reference_url=terms_url,
            content_language=None if content_language is None else content_language.upper(),
            **extra,
        )
    except DsaOptionError as exc:
        flag = FLAGS.get(exc.option)
        if flag is None:
            raise
        raise ConfigError(f"{flag}: {exc.problem}") from exc


def _scope(value: str) -> tuple[str, ...]:
    from moderator.audit.dsa.export import EEA_COUNTRIES, EU_COUNTRIES
    from moderator.audit.read.filters import shown

    named = {"EU": EU_COUNTRIES, "EEA": EEA_COUNTRIES}
    text = value.strip().upper()
    codes = named.get(text) or tuple(c.strip() for c in text.split(",") if c.strip())
    if not codes:
        raise ConfigError("--territorial-scope: EU, EEA or country codes like DE,AT")
    for code in codes:
        if code not in EEA_COUNTRIES:
            raise ConfigError(
                f"--territorial-scope: {shown(code, 24)} is not an EEA country code; use EU, "
                f"EEA or codes from {', '.join(sorted(EEA_COUNTRIES))}"
            )
    return codes


def _queries(filters: Mapping[str, str | None]) -> list[AuditQuery]:
    """One query per restricting decision that `filters` admit, oldest first: the filters mean
    what they mean in `audit query`, and --decision narrows the decisions read."""
    wanted = filters.get("decision")
    if wanted is not None and wanted not in RESTRICTING:
        _query(filters)  # a value outside the table's is refused as `audit query` refuses it
        raise ConfigError(
            f"--decision: {wanted} decisions restrict nothing and are never exported; "
            f"use {' or '.join(RESTRICTING)}"
        )
    decisions = RESTRICTING if wanted is None else (wanted,)
    return [_query({**filters, "decision": decision}) for decision in decisions]


def _query(given: Mapping[str, str | None]) -> AuditQuery:
    from moderator.audit.read.filters import BadFilter, build_query
    from moderator.cli.audit_query import flag_name

    try:
        return build_query(given, sort="decided_at", limit=PAGE)
    except BadFilter as exc:
        raise ConfigError(f"{flag_name(exc.field)}: {exc.reason_naming(flag_name)}") from exc


def _rows(store: AuditStore, query: AuditQuery) -> Iterator[AuditRow]:
    while True:
        page = store.query(query)
        yield from page.rows
        if page.next_cursor is None:
            return
        query = replace(query, cursor=page.next_cursor)


@contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    """Lines go to a temporary file that replaces `path` (or is copied to stdout) only when the
    whole export succeeded: a failed export leaves nothing half-written."""
    if path is None:
        with tempfile.SpooledTemporaryFile(SPOOL_BYTES, mode="w+", encoding="utf-8") as spool:
            yield spool  # type: ignore[misc]  # a text-mode spool file is a TextIO
            spool.seek(0)
            shutil.copyfileobj(spool, sys.stdout)
            sys.stdout.flush()
        return
    # A new file of a random name (O_EXCL): a name others could guess would let them plant a
    # link there and have the export write through it.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
