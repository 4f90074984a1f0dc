"""`moderator explain` (text, JSON, cache origin, redacted rows, unknown ids, exit codes),
`moderator audit query --columns`, and the demo's verdict table with its SCORE and BECAUSE
columns."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import pytest

from moderator.audit.db.store import AuditStore
from moderator.audit.models import IncomingRecord
from moderator.cli.demo import _print_table
from moderator.cli.main import main
from moderator.errors import ErrorCode
from moderator.explain.build import explain_record
from moderator.explain.render import explanation_json
from tests.policy_fixtures import clear_moderator_env
from tests.test_explain import DECIDED, GUARD, audit_record, demo, unsafe

SHA = "9f" * 32


def records() -> list[dict[str, Any]]:
    kids, acme = demo("kidsplace"), demo("acme")
    hour = timedelta(hours=1)
    # the same image under the same policy and model
    same: dict[str, Any] = {"model": GUARD, "sha256": SHA}
    return [
        audit_record("k-1", kids, assessment=unsafe("O6", 0.252)),
        audit_record("k-2", kids, error=ErrorCode.CORRUPT_IMAGE, model=None),
        # a failed try, the model's judgement, a cache hit on it, and a later judgement
        audit_record(
            "a-err", acme, error=ErrorCode.ENGINE_TIMEOUT, decided_at=DECIDED - 2 * hour, **same
        ),
        audit_record("a-1", acme, assessment=unsafe("O5", 0.74), decided_at=DECIDED - hour, **same),
        audit_record("a-2", acme, assessment=unsafe("O5", 0.74), source="cache", **same),
        audit_record("a-3", acme, assessment=unsafe("O5", 0.74), decided_at=DECIDED + hour, **same),
    ]


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clear_moderator_env(monkeypatch)
    path = tmp_path / "audit.db"
    with AuditStore.open(f"sqlite:///{path}") as store:
        items = [IncomingRecord("moderation.audit", 0, n, r) for n, r in enumerate(records())]
        assert store.insert(items).inserted == len(items)
    monkeypatch.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{path}")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def labelled(out: str) -> dict[str, str]:
    return {line[:9].strip(): line[11:] for line in out.splitlines()}


def cells(line: str) -> list[str]:
    return re.split(r" {2,}", line.strip())


# -- moderator explain ---------------------------------------------------------------------


def test_text_shows_each_step_of_a_threshold_decision(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "explain", "k-1")
    assert code == 0, err
    steps = labelled(out)
    # policies.dir (the settings' default) does not hold the demo policies that decided.
    assert steps["origin"].startswith("not shown: policies.dir")
    assert list(steps) == [
        "event",
        "input",
        "image",
        "policy",
        "origin",
        "engine",
        "rationale",
        "rule",
        "decision",
    ]
    assert steps["rule"] == "score 0.252 >= review_at 0.2 for O6 -> review"
    assert steps["decision"] == "review"
    assert steps["policy"].endswith(
        "row O6 (mode sensitive): block_at 0.5, review_at 0.2; Unsafe -> block"
    )


def test_json_is_the_explanation_document(
    db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # policies.dir holds the tenant's file: the origin is the library's, whatever the checkout's
    # own policies/ holds (a tenant without a file there is said so by the command alone).
    with as_file(files("moderator") / "data" / "demo-policies") as demo_policies:
        monkeypatch.setenv("MODERATOR_POLICIES__DIR", str(demo_policies))
    code, out, err = run(capsys, "explain", "k-2", "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    record = next(r for r in records() if r["verdict"]["event_id"] == "k-2")
    from moderator.audit.fields import record_fields
    from moderator.audit.read.row_origin import with_origin
    from moderator.settings import load_settings

    settings = load_settings(None, {})  # the command's: where it reads the origin from
    explained = explain_record(record_fields(record), record, record["policy_document"])
    expected = explanation_json(with_origin(explained, settings.policies.dir, settings.tenancy))
    assert doc == json.loads(json.dumps(expected))
    assert doc["rule"]["text"] == "on_error for corrupt_image -> block"


def test_a_cache_hit_names_the_first_model_judgement_in_the_store(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "explain", "a-2")
    assert code == 0, err
    # a-err failed (no judgement) and a-3 came later: a-1 is where the assessment came from
    assert labelled(out)["cache"].endswith(
        "earliest model judgement of this image in the audit store: "
        "event a-1 at 2026-11-29T01:05:00Z "
        "(the cached answer may come from a later one)"
    )


def test_a_redacted_row_is_explained_and_says_what_is_missing(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with AuditStore.open(f"sqlite:///{db}") as store:
        store.redact(DECIDED + timedelta(seconds=1), DECIDED + timedelta(days=31))
        assert store.get("k-1") is not None and store.get("k-1").record is None  # type: ignore[union-attr]
    code, out, err = run(capsys, "explain", "k-1")
    assert code == 0, err
    steps = labelled(out)
    assert steps["rule"] == "score 0.252 >= review_at 0.2 for O6 -> review"  # the kept policy
    assert steps["input"] == "tenant kidsplace, surface post, object key redacted"
    assert steps["missing"].startswith(
        "audit record: redacted by retention at 2026-12-30T02:05:00Z"
    )


def test_an_unknown_event_is_one_line_and_exit_1(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "explain", "no-such-event")
    assert (code, out) == (1, "")
    [line] = err.splitlines()
    assert line.startswith(
        f"moderator: no audit record for event 'no-such-event' in sqlite:///{db}; a message "
        "that could not be parsed gets none"
    )


def test_an_event_id_no_store_can_hold_is_exit_2(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "explain", "a\x00b")
    assert (code, out, err) == (2, "", "moderator: EVENT_ID: contains a NUL character\n")


def test_a_missing_database_is_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clear_moderator_env(monkeypatch)
    monkeypatch.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{tmp_path / 'none.db'}")
    code, _, err = run(capsys, "explain", "k-1")
    assert code == 1 and "no such database file" in err


def test_help_has_a_description_and_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["explain", "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert "Explain why the verdict of EVENT_ID was decided" in out
    assert "examples:\n  moderator explain " in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "explain why an event's verdict was decided" in capsys.readouterr().out


# -- audit query --columns -----------------------------------------------------------------


def test_columns_pick_the_table_columns_in_order(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "audit", "query", "--tenant", "kidsplace",
        "--columns", "event_id,surface,score,policy,rationale,because",
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert cells(lines[0]) == ["event_id", "surface", "score", "policy", "rationale", "because"]
    version = demo("kidsplace").version
    by_event = {cells(line)[0]: cells(line) for line in lines[1:]}
    assert by_event["k-1"] == [
        "k-1", "post", "0.252", version, "A pistol on a table.", "score 0.252 >= review 0.2"
    ]  # fmt: skip
    assert by_event["k-2"] == [
        "k-2", "post", "-", version, "-", "error: corrupt_image -> on_error block"
    ]  # fmt: skip
    code, out, _ = run(capsys, "audit", "query", "--tenant", "kidsplace")
    assert out.splitlines()[0].split() == [
        "decided_at", "tenant", "event_id", "object", "decision", "category", "score", "policy",
        "model", "error",
    ]  # fmt: skip


def test_csv_columns_take_the_csv_names_and_the_extras(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "audit", "query", "--tenant", "acme", "--format", "csv",
        "--columns", "event_id,source,because,rationale",
    )  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["event_id", "source", "because", "rationale"]
    cached = next(r for r in rows if r["event_id"] == "a-2")
    assert cached["because"] == "cache; Unsafe O5 -> block"
    assert cached["rationale"] == "A pistol on a table."


def test_an_unknown_column_lists_the_valid_ones(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "audit", "query", "--columns", "event_id,colour")
    assert (code, out) == (2, "")
    assert err.startswith("moderator: --columns: unknown column 'colour'; valid: decided_at, ")
    assert "surface" in err and "because" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, "audit", "query", "--format", "csv", "--columns", "tenant")
    assert code == 2 and "valid: event_id, tenant_id," in err and "rationale, because" in err
    long = "x" * 200 + "\udcff"  # hostile text stays one short line
    code, _, err = run(capsys, "audit", "query", "--format", "csv", "--columns", long)
    assert code == 2 and len(err.splitlines()) == 1 and len(err) < 400
    code, _, err = run(capsys, "audit", "query", "--format", "json", "--columns", "event_id")
    assert code == 2 and "only with --format table or csv" in err


# -- the demo's verdict table ----------------------------------------------------------------


def test_the_demo_table_shows_score_and_because(capsys: pytest.CaptureFixture[str]) -> None:
    kids = demo("kidsplace")
    verdicts = [
        audit_record("k-1", kids, assessment=unsafe("NA", 0.252, "Safe"))["verdict"],
        audit_record("k-2", kids, error=ErrorCode.OBJECT_NOT_FOUND, model=None)["verdict"],
        audit_record("a-2", demo("acme"), assessment=unsafe("O5", 0.74), source="cache")["verdict"],
    ]
    _print_table(verdicts)  # the bundled demo policies give the thresholds
    lines = [cells(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == [
        "TENANT", "OBJECT", "DECISION", "ASSESSMENT / ERROR", "SCORE", "BECAUSE", "SOURCE", "MS",
    ]  # fmt: skip
    assert lines[1][2:6] == [
        "review",
        "Safe NA: None applying",
        "0.252",
        "score 0.252 >= review 0.2",
    ]
    assert lines[2][2:6] == [
        "block", "error: object_not_found", "-", "error: object_not_found -> on_error block"
    ]  # fmt: skip
    assert lines[3][2:7] == [
        "block", "Unsafe O5: Criminal Planning", "0.74", "cache; Unsafe O5 -> block", "cache"
    ]  # fmt: skip
    _print_table(verdicts[:1], documents={})  # a version it has no document for
    assert "score 0.252 >= review" not in capsys.readouterr().out
