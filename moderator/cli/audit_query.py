"""`moderator audit query`: filter audit rows; print them as a table, JSON lines or CSV.

For operators: JSON and CSV carry every column, row ids, chain positions and Kafka offsets
included (the HTTP API leaves those out for tenants). stdout holds only rows.
`--columns a,b,c` picks the table's (or CSV's) columns, from its default ones and a few more
(surface, rationale, `because`: the rule that decided, from the explain core).
Exit codes: 0 ok (no rows included), 2 for a bad flag value (one line naming the flag) or bad
settings, 1 when the audit database cannot be opened.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Collection, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TextIO

from moderator.cli.style import add_command, add_config_flag, examples
from moderator.errors import ConfigError

if TYPE_CHECKING:
    from moderator.audit.db.store import AuditStore
    from moderator.audit.models import AuditQuery, AuditRow
    from moderator.audit.read.cells import RowExtras

FORMATS = ("table", "json", "csv")
TABLE_COLUMNS = (
    "decided_at", "tenant", "event_id", "object", "decision",
    "category", "score", "policy", "model", "error",
)  # fmt: skip
EXTRA_TABLE_COLUMNS = (
    "surface",
    "rating",
    "source",
    "sha256",
    "policy_hash",
    "rationale",
    "because",
)
"""Table columns shown only when `--columns` names them."""
EXTRA_CSV_COLUMNS = ("rationale", "because")
"""CSV columns beyond the row's scalar columns, shown only when `--columns` names them."""
INVALID_CURSOR = "invalid cursor (pass the value the previous page printed after `next: --cursor`)"
KEY_WIDTH = 40
RATIONALE_WIDTH = 60


def add_query_parser(audit_sub: Any) -> None:
    """Register `audit query` on the `audit` subparsers."""
    p = add_command(
        audit_sub,
        "query",
        help="filter audit rows; print a table, JSON lines or CSV",
        epilog=examples(
            "moderator audit query --tenant acme --decision block --since 2026-11-01",
            "moderator audit query --event-id a-1 --format json",
            "moderator audit query --all --format csv --columns event_id,decision,because",
        ),
        description=(
            "Print audit rows matching every given filter, newest first by default. When more "
            "rows match than --limit, the next page's flag is printed on stderr as "
            "`next: --cursor C` (repeat the same filters and --sort with it), or use --all. "
            "Times are ISO 8601; a date alone means midnight UTC and a time without an offset "
            "is UTC. Exit 0 ok, 2 bad flag value, 1 database unavailable."
        ),
    )
    add_filter_flags(p)
    p.add_argument(
        "--sort",
        default="-decided_at",
        metavar="decided_at|-decided_at",
        help="order (default: -decided_at, newest first)",
    )
    # --limit is checked by the command, so a bad value is one line naming it.
    p.add_argument("--limit", default="100", metavar="N", help="rows per page (1..1000)")
    p.add_argument("--cursor", metavar="C", help="continue after the page that printed it")
    p.add_argument("--all", action="store_true", help="page through every matching row")
    p.add_argument(
        "--format",
        default="table",
        type=_cut,
        choices=FORMATS,
        metavar="|".join(FORMATS),
        help="table: aligned columns; json: one row per line, every column; csv: a header, "
        "then one row per line (default: table)",
    )
    p.add_argument(
        "--columns",
        metavar="A,B,...",
        help="the table's or CSV's columns, in this order (default: the usual ones); table: "
        + ", ".join(TABLE_COLUMNS + EXTRA_TABLE_COLUMNS)
        + "; CSV: every CSV header name, rationale, because",
    )
    add_config_flag(p)


def _cut(value: str) -> str:
    """A value as argparse's `invalid choice` line repeats it: at most 24 characters."""
    return value if len(value) <= 24 else value[:21] + "..."


def cmd_query(args: argparse.Namespace) -> int:
    """Run `audit query` with parsed arguments."""
    from moderator.audit.read.cells import RowExtras
    from moderator.audit.read.cursor import InvalidCursor
    from moderator.audit.read.filters import BadFilter, build_query, parse_limit
    from moderator.logs import configure_cli_logging
    from moderator.settings import load_settings

    columns = parse_columns(args.columns, args.format)
    try:
        limit = parse_limit(str(args.limit))
        query = build_query(filter_values(args), sort=args.sort, limit=limit, cursor=args.cursor)
    except BadFilter as exc:
        cursor = isinstance(exc.__cause__, InvalidCursor)
        reason = INVALID_CURSOR if cursor else exc.reason_naming(flag_name)
        raise ConfigError(f"{flag_name(exc.field)}: {reason}") from exc
    settings = load_settings(args.config)
    configure_cli_logging(settings.log)
    with open_existing_store(settings.audit.url) as store:
        written: list[int] = []
        pages = _counted(_pages(store, query, every=args.all), written)
        extra = RowExtras(store)
        if args.format == "json":
            _write_json(pages, sys.stdout)
        elif args.format == "csv":
            _write_csv(pages, sys.stdout, columns, extra)
        else:
            _write_table(pages, sys.stdout, columns, extra)
        if not sum(written):
            print(nothing_matched(store, query.model), file=sys.stderr)
    return 0


def _counted(pages: Iterator[list[AuditRow]], counts: list[int]) -> Iterator[list[AuditRow]]:
    """`pages`, each page's row count appended to `counts`."""
    for rows in pages:
        counts.append(len(rows))
        yield rows


def nothing_matched(store: AuditStore, model: str | None) -> str:
    """The stderr line for a query without rows; it names the store's models when `--model`
    is none of them (a model name is matched exactly)."""
    line = "no matching audit rows"
    if model is None:
        return line
    engine, _, name = model.partition(":")
    models = store.models()
    if any(m == model or (not name and m.partition(":")[0] == engine) for m in models):
        return line
    return f"{line}; --model {model} is none of the store's models: " + (
        ", ".join(models) or "(none)"
    )


def parse_columns(value: str | None, output: str) -> tuple[str, ...] | None:
    """`--columns` as a tuple of names valid for the format (None: the default columns);
    ConfigError (exit 2) naming the valid ones for an unknown name."""
    from moderator.audit.read.filters import shown

    if value is None:
        return None
    if output == "json":
        raise ConfigError(
            "--columns: only with --format table or csv (JSON lines carry every column)"
        )
    valid = TABLE_COLUMNS + EXTRA_TABLE_COLUMNS if output == "table" else _csv_names()
    names = tuple(name.strip() for name in value.split(","))
    for name in names:
        if name not in valid:
            what = f"unknown column {shown(name, 16)}" if name else "an empty column name"
            raise ConfigError(f"--columns: {what}; valid: {', '.join(valid)}")
    return names


def _csv_names() -> tuple[str, ...]:
    from moderator.audit.read.rows import SCALAR_COLUMNS

    return SCALAR_COLUMNS + EXTRA_CSV_COLUMNS


def add_filter_flags(
    parser: argparse.ArgumentParser,
    names: Collection[str] | None = None,
    helps: Mapping[str, str] | None = None,
) -> None:
    """One flag per audit filter of the table (`event_id` → `--event-id`), or only of `names`;
    `helps` replaces a flag's help where a command gives the filter a narrower meaning."""
    from moderator.audit.read.filters import FILTERS

    for field in FILTERS:
        if names is None or field.name in names:
            help_text = (helps or {}).get(field.name, field.help)
            parser.add_argument(
                flag_name(field.name),
                dest=field.name,
                metavar=field.metavar,
                help=help_text,
                action=_Once,
            )


class _Once(argparse.Action):
    """A filter flag given twice is a usage error: argparse would keep the last value and
    silently drop the rows the first one asked for."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        from moderator.audit.read.filters import shown

        earlier = getattr(namespace, self.dest, None)
        if earlier is not None:
            flag = option_string or self.dest
            command = parser.prog.removeprefix("moderator ")
            parser.error(
                f"{flag}: given twice ({shown(earlier, 24)}, {shown(values, 24)}); "
                f"{command} takes one {flag}"
            )
        setattr(namespace, self.dest, values)


def filter_values(args: argparse.Namespace) -> dict[str, str | None]:
    """The filter flags' values as typed (None: not given), by field name."""
    from moderator.audit.read.filters import FILTERS

    return {f.name: getattr(args, f.name, None) for f in FILTERS}


def flag_name(field: str) -> str:
    """A filter's field name as its CLI flag (`event_id` → `--event-id`)."""
    return "--" + field.replace("_", "-")


def open_existing_store(url: str, *, write: bool = False) -> AuditStore:
    """The store at audit.url, read-only unless `write`; never a new one
    (`moderator.audit.db.existing.open_existing`)."""
    from moderator.audit.db.existing import open_existing

    return open_existing(url, write=write)


def _pages(store: AuditStore, query: AuditQuery, *, every: bool) -> Iterator[list[AuditRow]]:
    """Yield each page's rows; without `every`, one page and the next cursor on stderr. With
    `every`, a run past 5 s says on stderr, at most every 5 s, how many rows it has written."""
    from dataclasses import replace

    from moderator.cli.progress import Progress

    progress, written = Progress(), 0
    while True:
        page = store.query(query)
        yield page.rows
        written += len(page.rows)
        if every:
            progress.say(lambda s: f"query: {written:,} rows written, {s:.0f} s")  # noqa: B023
        if page.next_cursor is None:
            return
        if not every:
            sys.stdout.flush()
            print(f"next: --cursor {page.next_cursor}", file=sys.stderr)
            return
        query = replace(query, cursor=page.next_cursor)


def _write_json(pages: Iterator[list[AuditRow]], out: TextIO) -> None:
    from moderator.audit.read.rows import AuditItem
    from moderator.text import json_text

    for rows in pages:
        for row in rows:
            doc = AuditItem.from_row(row).model_dump(mode="json")
            out.write(json_text(doc, separators=(",", ":")) + "\n")


def _write_csv(
    pages: Iterator[list[AuditRow]],
    out: TextIO,
    columns: tuple[str, ...] | None = None,
    extra: RowExtras | None = None,
) -> None:
    from moderator.audit.read.rows import SCALAR_COLUMNS, AuditItem
    from moderator.text import csv_cell

    names = columns or SCALAR_COLUMNS
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    for rows in pages:
        for row in rows:
            doc: dict[str, Any] = AuditItem.from_row(row).model_dump(
                mode="json", exclude={"record"}
            )
            if extra is not None and "rationale" in names:
                doc["rationale"] = extra.rationale(row)
            if extra is not None and "because" in names:
                doc["because"] = extra.because(row)
            # Text cells as the table shows them, never a formula (moderator/text.py).
            writer.writerow([csv_cell(doc[name]) for name in names])


def _write_table(
    pages: Iterator[list[AuditRow]],
    out: TextIO,
    columns: tuple[str, ...] | None = None,
    extra: RowExtras | None = None,
) -> None:
    # Aligned over every printed row, so the rows are held until the last page (use json or
    # csv for large exports). Keys, surfaces and rationales come from uploads: each cell is made
    # safe for a terminal (a CR, LF or ESC shown as `\r`, `\n`, `\x1b`), after it is cut short.
    from moderator.cli.policy import table
    from moderator.text import safe_line

    names = columns or TABLE_COLUMNS
    cells = [tuple(map(safe_line, _pick(row, names, extra))) for rows in pages for row in rows]
    if not cells:
        return  # cmd_query says so on stderr
    for line in table(names, cells):
        out.write(line + "\n")


def _pick(row: AuditRow, names: tuple[str, ...], extra: RowExtras | None) -> tuple[str, ...]:
    """The cells of `names` for one row ("-" for a missing value)."""
    cells = dict(zip(TABLE_COLUMNS, table_cells(row), strict=True))
    for name in names:
        if name in cells:
            continue
        if name == "rationale":
            found = extra.rationale(row) if extra else None
            text = (found or "").strip()
            cells[name] = shorten_end(text, RATIONALE_WIDTH) if text else "-"
        elif name == "because":
            cells[name] = extra.because(row) if extra else "-"
        else:
            value = getattr(row, name)
            cells[name] = "-" if value is None else str(value)
    return tuple(cells[name] for name in names)


def table_cells(row: AuditRow) -> tuple[str, ...]:
    """One table line's cells ("-" for a missing value)."""
    from moderator.events.verdict import category_code
    from moderator.explain.render import num

    if row.object_key is None:
        key = "(redacted)" if row.redacted_at is not None else "-"
    else:
        key = shorten(
            f"{row.object_bucket}/{row.object_key}" if row.object_bucket else row.object_key
        )
    model = row.model_engine or "-"
    if row.model_engine and row.model_name:
        model = f"{row.model_engine}:{row.model_name.rsplit('/', 1)[-1]}"
    if row.model_smoke_test:
        model += " (smoke test)"  # a random-weight or fake model: the decision means nothing
    return (
        row.decided_at.strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{row.decided_at.microsecond // 1000:03d}Z",
        row.tenant_id,
        row.event_id,
        key,
        row.decision,
        category_code(row.category) if row.category else "-",
        num(row.score),  # as recorded, as explain shows it: 0.714 next to `block 0.7` misleads
        row.policy_version or "-",
        model,
        row.error_code or "-",
    )


def shorten_end(text: str, width: int) -> str:
    """`text` cut to `width` characters, ending in `...` when it was longer."""
    return text if len(text) <= width else text[: width - 3] + "..."


def shorten(text: str, width: int = KEY_WIDTH) -> str:
    """Keep both ends of a long key: `acme/2026/11/...b/photo.jpg`."""
    if len(text) <= width:
        return text
    head = (width - 3) // 3
    return text[:head] + "..." + text[-(width - 3 - head) :]
