"""One audit row of `moderator audit export-dsa` to its statement of reasons, or a skip."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moderator.errors import ConfigError

if TYPE_CHECKING:
    from moderator.audit.dsa.export import DsaOptions, TenantDsa
    from moderator.audit.models import AuditRow
    from moderator.audit.read.cells import PolicyDocuments
    from moderator.policy.registry import PolicyRegistry


class Exporter:
    """Builds and checks one row's statement; resolves each tenant's mapping once."""

    def __init__(
        self,
        registry: PolicyRegistry,
        options: DsaOptions,
        *,
        include_smoke_test: bool = False,
        policies_dir: Path | None = None,
    ) -> None:
        self._registry = registry
        self._options = options
        self._include_smoke_test = include_smoke_test
        self._mappings: dict[str, TenantDsa] = {}
        # With the bundled demo policies: the missing policies.dir, and the versions they map.
        self.only_versions: tuple[Path, frozenset[str]] | None = None
        self.counts: Counter[str] = Counter()
        self.first_dated_by_decision = ""  # "event E, tenant T"
        # The policy document each row was decided under (a redacted row's is the store's
        # policy version); None: the record's own only.
        self.documents: PolicyDocuments | None = None
        self.tenants_seen: set[str] = set()
        self.policies_dir = policies_dir  # where the mappings are read from, for errors

    def statement(self, row: AuditRow) -> dict[str, Any] | None:
        from moderator.audit.dsa.export import (
            DsaExportError,
            content_date_for,
            from_smoke_test_model,
            kept_record,
            skip_reason,
            skip_without_mapping,
            statement_for,
        )
        from moderator.audit.dsa.spec import validate_statement

        record = row.record if row.record is not None else kept_record(row)
        where = f"event {row.event_id} (tenant {row.tenant_id})"
        self.tenants_seen.add(row.tenant_id)
        try:
            smoke_test = from_smoke_test_model(record)
        except DsaExportError as exc:
            raise DsaExportError(f"{where}: {exc}") from exc
        # Checked before the mapping: a decision that means nothing is never reported, whatever
        # the mapping says, and a test tenant without a policy file must not stop the export.
        if smoke_test and not self._include_smoke_test:
            self.counts["smoke_test"] += 1
            return None
        if self.only_versions is not None and row.policy_version not in self.only_versions[1]:
            raise ConfigError(
                f"policies.dir: {self.only_versions[0]} is not a directory, and the bundled "
                f"demo policies map only the demo's decisions: {where} was decided under policy "
                f"version {row.policy_version} (pass --policies)"
            )
        try:
            mapping = self._mapping(row.tenant_id)
        except DsaExportError as exc:
            unmapped = skip_without_mapping(record)  # e.g. an unknown_tenant error verdict
            if unmapped is None:
                raise DsaExportError(f"{where}: {exc}; {policies_hint(row)}") from exc
            self.counts[unmapped] += 1
            return None
        try:
            reason = skip_reason(record, mapping)
            document = self.documents(row) if self.documents is not None else None
            statement = None if reason else statement_for(record, mapping, self._options, document)
        except DsaExportError as exc:
            raise DsaExportError(f"{where}: {exc}") from exc
        if statement is None:
            self.counts[reason or "skipped"] += 1
            return None
        problems = validate_statement(statement)
        if problems:
            raise DsaExportError(f"{where}: invalid statement: " + "; ".join(problems))
        self.counts["statements"] += 1
        self.counts["smoke_test_included"] += smoke_test
        self.counts["redacted"] += row.record is None
        if record.get("uploaded_at") is not None and not content_date_for(record)[1]:
            self.counts["dated_by_decision"] += 1
            self.first_dated_by_decision = (
                self.first_dated_by_decision or f"event {row.event_id}, tenant {row.tenant_id}"
            )
        return statement

    def _mapping(self, tenant_id: str) -> TenantDsa:
        from moderator.audit.dsa.export import DsaExportError, TenantDsa

        mapping = self._mappings.get(tenant_id)
        if mapping is None:
            status = self._registry.status().get(tenant_id)
            if status is not None and status.error and not status.versions:
                # Its file is there and does not load: a configuration error (exit 2), not a
                # tenant without a file. Other tenants' rows are exported before it is met.
                raise ConfigError(status.error)
            policy = self._registry.resolve(tenant_id, "default")
            if policy is None:
                where = "" if self.policies_dir is None else f" in {self.policies_dir}"
                raise DsaExportError(
                    f"no policy file for the tenant{where}, so its DSA mapping is unknown"
                )
            surfaces = status.versions if status is not None else ("default",)
            mapping = TenantDsa.from_policy(policy.resolved, surfaces)
            self._mappings[tenant_id] = mapping
        return mapping


def policies_hint(row: AuditRow) -> str:
    """What to pass for a tenant whose policy file is not in the policy directory: the bundled
    demo policies for a decision `moderator demo` made, else a directory holding the file."""
    from moderator.cli.explain import bundled_demo_documents, demo_hint

    if row.policy_version is not None and row.policy_version in bundled_demo_documents():
        return demo_hint()
    return "pass --policies DIR holding the tenant's policy file"
