"""The one table of audit filters (`FILTERS`): the store query, the CLI flags and the HTTP API's
query parameters all follow it, by the same names."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from moderator.audit.db.store import AuditStore
from moderator.audit.db.tables import audit_records
from moderator.audit.models import AuditQuery
from moderator.audit.read.filters import DECISIONS, FILTERS, build_query, parse_time_arg
from moderator.audit.read.query import RULES
from moderator.cli.audit_dsa import add_dsa_parser
from moderator.cli.audit_query import add_query_parser, filter_values, flag_name
from tests.audit_fixtures import ALPHA, BETA, fill

NAMES = [f.name for f in FILTERS]


def test_every_filter_is_an_audit_query_attribute_of_the_same_name() -> None:
    attributes = [f.name for f in dataclasses.fields(AuditQuery)]
    assert attributes == [*NAMES, "sort", "limit", "cursor", "tenant_ids"]


def test_each_filter_equals_a_column_or_has_a_rule_of_its_own() -> None:
    columns = set(audit_records.c.keys())
    assert {f.column for f in FILTERS if f.column} <= columns
    assert set(RULES) == {f.name for f in FILTERS if f.column is None}


def test_a_name_outside_the_table_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="tenant_id"):
        build_query({"tenant_id": ALPHA})


def test_tenant_and_bucket_match_their_columns(tmp_path: Path) -> None:
    with AuditStore.open(f"sqlite:///{tmp_path / 'audit.db'}") as store:
        fill(store)

        def tenants(**given: str) -> set[str]:
            rows = store.query(build_query(given, limit=1000)).rows
            return {row.tenant_id for row in rows}

        assert tenants(bucket="uploads") == {ALPHA, BETA}
        assert tenants(bucket="uploads", tenant=BETA) == {BETA}
        assert tenants(bucket="elsewhere") == set()


def subcommand(add: Callable[[Any], None], name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add(sub)
    found: argparse.ArgumentParser = sub.choices[name]
    return found


def test_audit_query_has_one_flag_per_filter_with_the_tables_help() -> None:
    query = subcommand(add_query_parser, "query")
    help_text = " ".join(query.format_help().split())
    for field in FILTERS:
        args = query.parse_args([flag_name(field.name), "v"])
        assert filter_values(args) == {name: "v" if name == field.name else None for name in NAMES}
        assert f"{flag_name(field.name)} {field.metavar} {field.help}" in help_text


def test_export_dsa_has_one_flag_per_filter_as_audit_query_has() -> None:
    dsa = subcommand(add_dsa_parser, "export-dsa")
    help_text = " ".join(dsa.format_help().split())
    for field in FILTERS:
        args = dsa.parse_args([flag_name(field.name), "v"])
        assert filter_values(args) == {name: "v" if name == field.name else None for name in NAMES}
        assert f"{flag_name(field.name)} {field.metavar}" in help_text


def test_the_api_has_one_query_parameter_per_filter_with_the_tables_help() -> None:
    pytest.importorskip("fastapi", reason="the audit API needs the api extra")
    from moderator.audit.read.api import create_app

    doc = create_app(lambda: AuditStore.open("sqlite://", memory=True), {}).openapi()
    listed = doc["paths"]["/v1/verdicts"]["get"]["parameters"]
    assert [p["name"] for p in listed] == [*NAMES, "sort", "limit", "cursor"]
    for field, param in zip(FILTERS, listed, strict=False):
        assert param["in"] == "query" and not param["required"]
        assert param["description"] == field.help
    decision = listed[NAMES.index("decision")]["schema"]["anyOf"][0]
    assert tuple(decision["enum"]) == DECISIONS


def test_a_time_ending_in_a_lower_case_z_is_utc_as_rfc_3339_allows() -> None:
    expected = datetime(2026, 11, 29, 2, 0, 0, 500000, tzinfo=UTC)
    assert parse_time_arg("since", "2026-11-29t02:00:00.5z") == expected
    assert parse_time_arg("since", "2026-11-29T02:00:00.5Z") == expected
