"""The Grafana dashboard and the Prometheus alert rules parse and use only documented metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from moderator.obs.metrics import METRICS

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "moderator.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
NAME = re.compile(r"\bmoderator_[a-z_]+")
# Series a histogram exposes besides its name.
HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


def used_metrics(expr: str) -> set[str]:
    names = set()
    for found in NAME.findall(expr):
        for part in HISTOGRAM_PARTS:
            if found.endswith(part) and found[: -len(part)] in {m.name for m in METRICS}:
                found = found[: -len(part)]
        names.add(found)
    return names


def dashboard_exprs() -> list[str]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in document["panels"] for t in p["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def documented() -> set[str]:
    text = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")
    return set(re.findall(r"`(moderator_[a-z_]+)`", text))


def test_every_dashboard_and_alert_metric_is_defined_and_documented() -> None:
    exprs = dashboard_exprs() + [rule["expr"] for rule in alert_rules()]
    used = set().union(*(used_metrics(e) for e in exprs))
    defined = {m.name for m in METRICS}
    assert used - defined == set()
    assert used - documented() == set()


def test_the_reference_page_documents_every_metric() -> None:
    assert {m.name for m in METRICS} - documented() == set()


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert document["uid"] and document["panels"]
    ids = [p["id"] for p in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in document["panels"]:
        assert panel["targets"], panel["title"]
        assert all(t["expr"].count("(") == t["expr"].count(")") for t in panel["targets"])


def test_the_alerts_cover_what_operators_are_paged_for() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(rules) >= {
        "ModeratorConsumerLagGrowing",
        "ModeratorDeadLetterRate",
        "ModeratorErrorVerdictRate",
        "ModeratorPolicyStale",
        "ModeratorEngineNotReady",
        "ModeratorCheckpointsFailing",
        "ModeratorAuditChainStalled",
        "ModeratorObjectStoreUnavailable",
        "ModeratorAuditEventIdConflict",
        "ModeratorAuditRecordsExpired",
        "ModeratorAuditStoreFailing",
        "ModeratorConsumerAbsent",
    }
    for name, rule in rules.items():
        assert rule["expr"].count("(") == rule["expr"].count(")"), name
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_an_undefined_metric_in_an_expression_is_caught() -> None:
    assert used_metrics("rate(moderator_made_up_total[5m])") == {"moderator_made_up_total"}
    assert used_metrics("rate(moderator_stage_latency_seconds_bucket[5m])") == {
        "moderator_stage_latency_seconds"
    }
