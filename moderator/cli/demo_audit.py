"""`moderator demo`, audit part: the audit sink run in-process until every audit record of the
run is stored, then a short query of the store."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from pathlib import Path

from moderator.audit.db.store import AuditStore
from moderator.audit.models import AuditQuery, AuditRow
from moderator.audit.sink.inputs import make_sink_consumer
from moderator.audit.sink.loop import AuditSink
from moderator.audit.sink.wiring import build_anchor
from moderator.errors import ModeratorError
from moderator.settings import Settings
from moderator.text import safe_line

ROWS_PER_TENANT = 3


def store_and_show(
    settings: Settings,
    event_ids: Collection[str],
    tenants: Sequence[str],
    config: Path | None,
) -> None:
    """Run the sink until each of `event_ids` is in the store at audit.url, then print the
    newest rows of each tenant. Raises ModeratorError when they are not all stored in time."""
    with AuditStore.open(settings.audit.url) as store:
        anchor, producer = build_anchor(settings, store)
        sink = AuditSink(settings, store, make_sink_consumer(settings), anchor=anchor)
        pending = set(event_ids)
        deadline = time.monotonic() + 30 + 0.1 * len(pending)
        sink.start()
        try:
            seen = 0
            while pending and time.monotonic() < deadline:
                sink.step()
                if sink.stats.messages != seen:  # something arrived: look the rest up
                    seen = sink.stats.messages
                    pending = {e for e in pending if store.get(e) is None}
        finally:
            sink.close()
            if producer is not None:
                producer.flush(5)
        if pending:
            raise ModeratorError(
                f"the audit sink stored {len(event_ids) - len(pending)} of {len(event_ids)} "
                f"audit records in time (audit.url {store.url})"
            )
        stats = sink.stats
        print(
            f"\naudit store {store.url}: {stats.inserted} records stored by the audit sink "
            f"({stats.duplicates} duplicates skipped); newest per tenant:"
        )
        rows = [
            row
            for tenant in tenants
            for row in store.query(AuditQuery(tenant=tenant, limit=ROWS_PER_TENANT)).rows
        ]
        _print_rows(rows)
    with_config = f" --config {config}" if config is not None else ""
    print(
        f"`moderator audit query --tenant {tenants[0]}{with_config}` answers from the same store"
        " (run it from this directory)."
    )


def _print_rows(rows: list[AuditRow]) -> None:
    table = [("TENANT", "OBJECT", "DECISION", "CATEGORY / ERROR", "POLICY", "CHAIN SEQ")]
    for row in rows:
        what = row.category or (f"error: {row.error_code}" if row.error_code else "-")
        table.append(
            (
                row.tenant_id,
                (row.object_key or "-").split("/", 1)[-1][:34],
                row.decision,
                what[:30],
                row.policy_version or "-",
                f"p{row.partition}#{row.seq}",
            )
        )
    shown = [tuple(map(safe_line, row)) for row in table]  # keys come from uploads
    widths = [max(len(r[i]) for r in shown) for i in range(len(shown[0]))]
    for line in shown:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
