"""`moderator replay` on the embedded broker and S3 server: 300 events moderated under one policy
directory, replayed under another, and the report checked against counts worked out here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from moderator.cli.main import main
from moderator.dev.stack import EmbeddedStack
from moderator.policy.bundled import write_default_policy
from replay_support import BUCKET, Moderated, committed, moderate, read_topic

N = 300
GONE = 12  # objects deleted after the live run: missing, not changes


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    """The stack, with its S3 credentials in the environment for the whole module (the live
    run in `moderated` and the replays read objects with them)."""
    with EmbeddedStack(buckets=(BUCKET,)) as started, pytest.MonkeyPatch.context() as env:
        for name, value in started.env().items():
            if name.startswith("AWS_"):
                env.setenv(name, value)
        yield started


@pytest.fixture(scope="module")
def moderated(stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory) -> Moderated:
    return moderate(stack, tmp_path_factory.mktemp("replay"), N)


def _p2(directory: Path) -> Path:
    """acme: O2 (violence) switched to allowed; kids: O6 decided by score thresholds."""
    directory.mkdir()
    write_default_policy(directory)
    (directory / "acme.yaml").write_text("categories:\n  O2: {mode: allowed, action: allow}\n")
    (directory / "kids.yaml").write_text("categories:\n  O6: {block_at: 0.8, review_at: 0.6}\n")
    (directory / "news.yaml").write_text("on_error: review\n")
    return directory


def _expected(original: dict[str, Any]) -> str:
    """The decision under P2, worked out from the original verdict by the rules above."""
    assessment = original["assessment"]
    if original["error"] is not None or assessment is None:
        return str(original["decision"])
    code = assessment["category"].split(":")[0]
    if original["tenant_id"] == "acme" and code == "O2" and assessment["rating"] == "Unsafe":
        return "allow"
    if original["tenant_id"] == "kids" and code == "O6":
        score = assessment["score"]
        return "block" if score >= 0.8 else "review" if score >= 0.6 else "allow"
    return str(original["decision"])


def test_replay_under_new_policies_reports_what_changes(
    moderated: Moderated, stack: EmbeddedStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s3 = stack.s3_client()
    gone = sorted(moderated.keys)[:GONE]
    for event_id in gone:
        s3.delete_object(Bucket=BUCKET, Key=moderated.keys[event_id])
    live_before = committed(stack.bootstrap_servers, moderated.group, moderated.topics["uploads"])
    p2 = _p2(tmp_path / "p2")
    report_dir = tmp_path / "report"

    code = main(
        [
            "replay",
            "--config",
            str(moderated.config),
            "--policies",
            str(p2),
            "--report",
            str(report_dir),
        ]
    )

    assert code == 0, capsys.readouterr().err
    report = json.loads((report_dir / "report.json").read_text())
    compared = {e: v for e, v in moderated.verdicts.items() if e not in gone}
    transitions = Counter(f"{v['decision']}->{_expected(v)}" for v in compared.values())
    changed = {e for e, v in compared.items() if v["decision"] != _expected(v)}
    assert report["events"] == N
    assert report["missing_objects"] == GONE
    assert report["transitions"] == dict(transitions)
    assert report["changed"] == len(changed) > 0
    lines = (report_dir / "changed.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["event_id"] for line in lines) == sorted(changed)
    per_tenant = Counter(compared[e]["tenant_id"] for e in changed)
    assert {t: c["changed"] for t, c in report["by_tenant"].items() if c["changed"]} == dict(
        per_tenant
    )
    assert set(report["policy_versions"]) >= {"acme/default", "kids/default", "news/default"}
    assert any("O2" in line for line in report["header"]["policy_diff"])

    # Replayed verdicts went to the replay topic only, the live group did not move.
    bootstrap = stack.bootstrap_servers
    replayed = read_topic(bootstrap, moderated.topics["replay"], N, 30)
    assert {v["event_id"] for v in replayed} == set(moderated.verdicts)
    assert {v["replay"]["run_id"] for v in replayed} == {report["run_id"]}
    assert len(read_topic(bootstrap, moderated.topics["verdicts"], N, 10)) == N
    assert len(read_topic(bootstrap, moderated.topics["audit"], N, 10)) == N
    assert committed(bootstrap, moderated.group, moderated.topics["uploads"]) == live_before
    for path in ("report.md", "report.html", "run.json"):
        assert (report_dir / path).stat().st_size > 0
    out = capsys.readouterr().out
    assert "allow->allow" in out or "allow" in out


def test_dry_run_counts_per_tenant_without_writing(
    moderated: Moderated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "replay",
            "--config",
            str(moderated.config),
            "--tenant",
            "kids",
            "--dry-run",
            "--report",
            str(tmp_path / "r"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert not (tmp_path / "r").exists()
    kids = sum(1 for v in moderated.verdicts.values() if v["tenant_id"] == "kids")
    assert f"{'kids':<24}  {kids:>9}" in out
    assert "acme" not in out


def test_a_killed_replay_resumes_and_reports_each_event_once(
    moderated: Moderated, stack: EmbeddedStack, tmp_path: Path
) -> None:
    report_dir = tmp_path / "report"
    base = [sys.executable, "-m", "moderator.cli.main", "replay", "--config", str(moderated.config)]
    env = {**os.environ, **{k: v for k, v in stack.env().items() if k.startswith("AWS_")}}
    first = subprocess.Popen(
        [*base, "--rate", "20", "--report", str(report_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (report_dir / "run.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(6)  # about 120 of the 300 events at 20/s
        assert first.poll() is None, "the first process ended before it could be killed"
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(30)
    plan = json.loads((report_dir / "run.json").read_text())
    assert not (report_dir / "report.json").exists()
    before = [
        v
        for v in read_topic(stack.bootstrap_servers, moderated.topics["replay"], 1, 15)
        if v["replay"]["run_id"] == plan["run_id"]
    ]
    assert 0 < len({v["event_id"] for v in before}) < N

    # Without --config, a resume reads the settings file the run was started with; one that
    # would judge differently is refused, naming the setting.
    resume = [*base[:4], "--resume", plan["run_id"], "--report", str(report_dir)]
    changed = subprocess.run(
        resume,
        env={**env, "MODERATOR_ENGINE__FAKE__UNSAFE_RATE": "0.9"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert changed.returncode == 2, changed.stderr[-3000:]
    assert "settings changed since the run started (engine.fake.unsafe_rate)" in changed.stderr
    asked = subprocess.run(  # a dry run of the resume answers the same
        [*resume, "--dry-run"],
        env={**env, "MODERATOR_ENGINE__FAKE__UNSAFE_RATE": "0.9"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert asked.returncode == 2 and "(engine.fake.unsafe_rate)" in asked.stderr, asked.stderr
    resumed = subprocess.run(
        resume, env=env, capture_output=True, text=True, timeout=300, check=False
    )

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    report = json.loads((report_dir / "report.json").read_text())
    assert report["run_id"] == plan["run_id"]
    assert report["events"] == N
    assert sum(report["transitions"].values()) + report["missing_objects"] == N
    assert report["header"]["resumed_from"], "the second process started where the first stopped"


def test_a_time_range_on_the_embedded_broker_is_exact(
    stack: EmbeddedStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hour = 3_600_000
    base = (int(time.time()) // 3600 - 5) * hour  # on the hour, five hours ago
    stamps = [base + (i // 30) * hour + (i % 30) * 1000 for i in range(90)]  # 3 bands of 30
    (tmp_path / "live").mkdir()
    timed = moderate(stack, tmp_path / "live", 90, timestamps=stamps)
    band = {f"ev-{i}" for i in range(30, 60)}
    since = datetime.fromtimestamp((base + hour) / 1000, UTC).isoformat()
    until = datetime.fromtimestamp((base + 2 * hour) / 1000, UTC).isoformat()
    args = ["replay", "--config", str(timed.config), "--from", since, "--to", until]

    assert main([*args, "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "timestamp scan" in out
    totals = [line.split() for line in out.splitlines() if line.split()[:1] == ["total"]]
    assert totals == [["total", "30", "30", "30"]], out  # offsets, messages, events in range

    assert main([*args, "--report", str(tmp_path / "report")]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["events"] == 30
    replayed = read_topic(stack.bootstrap_servers, timed.topics["replay"], 30, 30)
    assert {v["event_id"] for v in replayed if v["replay"]["run_id"] == report["run_id"]} == band


def test_reuse_assessments_redecides_without_the_engine(
    moderated: Moderated, tmp_path: Path
) -> None:
    p2 = _p2(tmp_path / "p2")
    report_dir = tmp_path / "report"
    args = ["replay", "--config", str(moderated.config), "--policies", str(p2)]

    assert main([*args, "--reuse-assessments", "--report", str(report_dir)]) == 0

    report = json.loads((report_dir / "report.json").read_text())
    judged = [v for v in moderated.verdicts.values() if v["assessment"] and not v["error"]]
    assert report["paths"] == {"assessment": len(judged)} | (
        {"error": N - len(judged)} if len(judged) < N else {}
    )
    expected = Counter(f"{v['decision']}->{_expected(v)}" for v in judged)
    assert report["transitions"] == dict(expected)


def test_a_tenant_without_a_policy_is_warned_about_and_the_header_names_the_live_side(
    moderated: Moderated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """news has no policy in the replay's directory: one warning, then every news event is an
    unknown_tenant error. The header's live engine and model are the originals' (`fake`), not
    the settings' default engine, and its paths are absolute."""
    nonews = tmp_path / "policies-nonews"
    nonews.mkdir()
    write_default_policy(nonews)
    for tenant in ("acme", "kids"):
        (nonews / f"{tenant}.yaml").write_text("on_error: review\n")
    report_dir = tmp_path / "report"
    args = ["replay", "--config", str(moderated.config), "--policies", str(nonews)]

    assert main([*args, "--report", str(report_dir)]) == 0
    err = capsys.readouterr().err
    warning = (
        f"moderator: warning: tenant news has events in the range but no policy in {nonews}: "
        "its verdicts will be unknown_tenant errors"
    )
    assert [line for line in err.splitlines() if "warning" in line] == [warning], err
    report = json.loads((report_dir / "report.json").read_text())
    news = sum(1 for v in moderated.verdicts.values() if v["tenant_id"] == "news")
    assert report["errors"]["unknown_tenant"] == news
    header = report["header"]
    assert (header["live_engine"], header["live_model"]) == ("fake", "fake")
    assert Path(header["live_policies"]).is_absolute() and header["policies"] == str(nonews)
    md = (report_dir / "report.md").read_text()
    assert "- **reuse assessments**: no\n" in md and "- **dropped outputs**: none\n" in md


def test_a_dry_run_notes_a_clamped_range_and_a_tenant_without_a_policy(
    moderated: Moderated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nonews = tmp_path / "policies-nonews"
    nonews.mkdir()
    write_default_policy(nonews)
    args = ["replay", "--config", str(moderated.config), "--policies", str(nonews), "--dry-run"]

    assert main([*args, "--offsets", "0:0-999999"]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if line.startswith("moderator: note:")]
    assert len(notes) == 1 and notes[0].startswith(
        "moderator: note: --offsets 0:0-999999 ends past the end of partition 0 ("
    ), captured.err
    assert "; replaying 0:0-" in notes[0]
    warned = [line for line in captured.err.splitlines() if "warning" in line]
    assert all("but no policy in" in line for line in warned) and warned, captured.err
    assert captured.out.splitlines()[1].split() == [
        "partition",
        "range",
        "size",
        "messages",
        "events",
    ]
