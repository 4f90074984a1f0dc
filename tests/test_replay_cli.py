"""`moderator replay` flags: every usage error exits 2 with one stderr line naming the flag, and
is found before Kafka is contacted; `--help` lists the whole interface.

Kafka is out of reach twice over: the settings point at 127.0.0.1:1 (nothing listens there), and
`make_consumer` is replaced by a stand-in that fails the command at once, so a check that
happened only after contacting Kafka shows up as exit 1 naming that stand-in.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from moderator.cli.main import main
from moderator.logs import configure_logging
from moderator.settings import ENV_PREFIX, LogSettings

FROM, EARLIER = "2026-11-29T02:00:00Z", "2026-11-29T01:59:59Z"
INTERFACE = (
    *("--from", "--to", "--offsets", "--tenant", "--sample", "--policies", "--engine"),
    *("--model", "--output-topic", "--report", "--rate", "--dry-run", "--resume"),
    *("--allow-live-output", "--max-in-flight", "--reuse-assessments", "--originals"),
    *("--live-policies", "--config"),
)
CONTACTED = "replay test: contacted Kafka"


@pytest.fixture(autouse=True)
def no_kafka(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No MODERATOR_* variables, and any Kafka client the command makes fails it loudly."""
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError(CONTACTED)

    monkeypatch.setattr("moderator.ingest.kafka.make_consumer", refuse)
    monkeypatch.setattr("moderator.ingest.startup.probe_cluster", refuse)
    yield
    configure_logging(LogSettings(level="warning", format="json"))  # as tests/conftest.py has it


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(
        "kafka:\n"
        "  bootstrap_servers: 127.0.0.1:1\n"
        "  startup_timeout_s: 1\n"
        "  topics:\n"
        "    uploads: in.uploads\n"
        "    verdicts: out.verdicts\n"
        "    audit: out.audit\n"
        "    dlq: out.dlq\n"
        "    replay: out.replay\n",
        encoding="utf-8",
    )
    return path


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    """main(argv): (exit code, stdout, stderr); argparse exits included."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(capsys: pytest.CaptureFixture[str], config: Path, *flags: str) -> str:
    """`moderator replay --config CONFIG FLAGS` exits 2 with one stderr line and nothing on
    stdout, and `--debug` only puts a traceback before the same line. The line."""
    argv = ["replay", "--config", str(config), *flags]
    code, out, err = run(capsys, argv)
    assert (code, out) == (2, ""), err
    assert err.count("\n") == 1 and err.startswith("moderator"), err
    debug_code, debug_out, debug_err = run(capsys, ["--debug", *argv])
    assert (debug_code, debug_out) == (2, "")
    assert debug_err.splitlines()[-1] == err.rstrip("\n")
    return err.rstrip("\n")


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--from", "yesterday"], "--from: not an ISO 8601 time: 'yesterday' (e.g. "),
        (["--from", "2026-11"], "--from: not an ISO 8601 time: '2026-11' (e.g. "),
        (["--from", ""], "--from: not an ISO 8601 time: '' (e.g. "),
        (["--to", "2026-13-01T00:00:00Z"], "--to: not an ISO 8601 time: '2026-13-01T00:00:00Z'"),
        (["--to", "0999-12-31"], "--to: out of range: '0999-12-31' (use 1000-01-01T00:00:00Z"),
        (["--from", "2026-11-29", "--to", "2026-11-29"], "--to: must be later than --from"),
        (["--from", FROM, "--to", EARLIER], "--to: must be later than --from"),
        (["--from", FROM, "--to", FROM], "--to: must be later than --from"),
        (["--offsets", "0:0-10", "--from", FROM], "--offsets: give either --offsets or --from"),
        (["--offsets", "0:0-10", "--to", FROM], "--offsets: give either --offsets or --from"),
        (["--offsets", "x"], "--offsets: 'x' is not PARTITION:START-END"),
        (["--offsets", "0:10"], "--offsets: '0:10' is not PARTITION:START-END"),
        (["--offsets", ""], "--offsets: '' is not PARTITION:START-END"),
        (["--offsets", "0:10-5"], "--offsets: '0:10-5': END must be >= START"),
        (["--offsets", "0:0-1,0:5-6"], "--offsets: partition 0 is given twice"),
        (["--sample", "0"], "--sample: '0' must be a fraction in (0, 1]"),
        (["--sample", "2"], "--sample: '2' must be a fraction in (0, 1]"),
        (["--sample", "half"], "--sample: 'half' must be a fraction in (0, 1]"),
        (["--sample", ""], "--sample: '' must be a fraction in (0, 1]"),
        (["--rate", "0"], "--rate: must be above 0 events per second, got 0"),
        (["--rate", "-5"], "--rate: must be above 0 events per second"),
        (["--rate", "nan"], "--rate: must be above 0 events per second"),
        (["--max-in-flight", "1"], "--max-in-flight: must be between 2 and 100000, got 1"),
        (["--max-in-flight", "100001"], "--max-in-flight: must be between 2 and 100000"),
        (["--output-topic", "in.uploads"], "--output-topic: in.uploads is the uploads topic"),
        (["--output-topic", ""], "--output-topic: must name a topic"),
        (["--tenant", "BAD!"], "--tenant: 'BAD!' is not a tenant id"),
        (["--tenant", "acme", "--tenant", ""], "--tenant: '' is not a tenant id"),
    ],
)
def test_a_bad_range_or_rate_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], config: Path, flags: list[str], says: str
) -> None:
    line = usage_error(capsys, config, *flags)
    assert line.startswith("moderator: " + says.split(":")[0] + ":"), line
    assert says in line, line
    assert CONTACTED not in line


@pytest.mark.parametrize("topic", ["out.verdicts", "out.audit", "out.dlq"])
def test_a_live_output_topic_needs_allow_live_output(
    capsys: pytest.CaptureFixture[str], config: Path, topic: str
) -> None:
    line = usage_error(capsys, config, "--output-topic", topic)
    assert line == (
        f"moderator: --output-topic: {topic} is a live topic; add --allow-live-output to write "
        "there"
    )


def test_allow_live_output_never_allows_the_uploads_topic(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    line = usage_error(capsys, config, "--output-topic", "in.uploads", "--allow-live-output")
    assert "--output-topic: in.uploads is the uploads topic" in line


def test_a_dry_run_checks_its_flags_before_kafka_too(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    line = usage_error(capsys, config, "--dry-run", "--from", FROM, "--to", EARLIER)
    assert line == "moderator: --to: must be later than --from"


@pytest.mark.parametrize("run_id", ["../r1", "r 1", "-r1", "", "r" * 65])
def test_resume_needs_a_run_id(
    capsys: pytest.CaptureFixture[str], config: Path, run_id: str
) -> None:
    line = usage_error(capsys, config, f"--resume={run_id}")
    assert line.startswith(f"moderator: --resume: {run_id!r} is not a run id"), line


@pytest.mark.parametrize(
    ("flags", "drop"),
    [
        (["--from", FROM], "--from"),
        (["--to", FROM], "--to"),
        (["--from", ""], "--from"),
        (["--offsets", "0:0-10"], "--offsets"),
        (["--tenant", "alpha"], "--tenant"),
        (["--sample", "0.5"], "--sample"),
        (["--policies", "policies"], "--policies"),
        (["--engine", "fake"], "--engine"),
        (["--model", "m"], "--model"),
        (["--output-topic", "out.replay"], "--output-topic"),
        (["--reuse-assessments"], "--reuse-assessments"),
        (["--allow-live-output"], "--allow-live-output"),
        (
            ["--from", FROM, "--tenant", "a", "--output-topic", "t"],
            "--from, --tenant, --output-topic",
        ),
    ],
)
def test_resume_names_the_flags_to_drop(
    capsys: pytest.CaptureFixture[str], config: Path, flags: list[str], drop: str
) -> None:
    line = usage_error(capsys, config, "--resume", "r1", *flags)
    assert line.startswith("moderator: --resume r1: the run's plan fixes"), line
    assert line.endswith(f"; drop {drop}"), line


def test_resume_without_a_plan_asks_for_the_report_directory(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "replay-r1"
    empty.mkdir()
    line = usage_error(capsys, config, "--resume", "r1", "--report", str(empty))
    assert line == (
        f"moderator: --resume r1: no run.json in {empty} (pass the run's --report directory)"
    )


@pytest.mark.parametrize(
    "flags",
    [
        ["--engine", "gpt"],
        ["--originals", "elsewhere"],
        ["--rate", "fast"],
        ["--max-in-flight", "many"],
        ["--bogus"],
    ],
)
def test_a_malformed_flag_is_an_argparse_usage_error(
    capsys: pytest.CaptureFixture[str], config: Path, flags: list[str]
) -> None:
    line = usage_error(capsys, config, *flags)
    assert "error:" in line and flags[0] in line and "--help" in line


def test_valid_flags_go_on_to_kafka(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    """The stand-in for Kafka is reached once the flags are right (so the tests above would see
    a check made after contacting Kafka)."""
    argv = ["replay", "--config", str(config), "--dry-run", "--from", EARLIER, "--to", FROM]
    code, out, err = run(capsys, argv)
    assert (code, out) == (1, ""), err
    assert CONTACTED in err


def test_an_unreachable_cluster_is_one_line_naming_its_address(
    capsys: pytest.CaptureFixture[str], config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 1 (a runtime failure, as for any run that cannot reach Kafka), after the startup
    timeout, with the servers and the setting to check: not a raw client error."""
    monkeypatch.undo()  # the real probe, against 127.0.0.1:1 with a 1 s startup timeout
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    code, out, err = run(capsys, ["replay", "--config", str(config), "--dry-run"])
    assert (code, out) == (1, ""), err
    assert err.count("\n") == 1, err
    assert err.startswith("moderator: kafka: cannot reach the cluster within 1 s"), err
    assert "127.0.0.1:1" in err and "kafka.bootstrap_servers" in err, err


def test_a_missing_uploads_topic_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str], config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 2 with one line naming kafka.topics.uploads, not a raw broker error (exit 1)."""
    from types import SimpleNamespace

    from confluent_kafka import KafkaError

    class NoTopic:
        def list_topics(self, topic: str, timeout: float = -1) -> Any:
            error = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)
            return SimpleNamespace(topics={topic: SimpleNamespace(error=error, partitions={})})

        def close(self) -> None:
            pass

    monkeypatch.setattr("moderator.ingest.startup.probe_cluster", lambda *a, **k: {})
    monkeypatch.setattr("moderator.ingest.kafka.make_consumer", lambda *a, **k: NoTopic())
    monkeypatch.setenv("MODERATOR_KAFKA__TOPICS__UPLOADS", "nosuch")
    code, out, err = run(capsys, ["replay", "--config", str(config), "--dry-run"])
    assert (code, out) == (2, "")
    assert err == "moderator: kafka.topics.uploads: topic nosuch does not exist on the cluster\n"


def test_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, ["replay", "--help"])
    assert (code, err) == (0, "")
    assert out.startswith("usage: moderator replay")
    missing = [flag for flag in INTERFACE if flag not in out.split()]
    assert not missing, missing


def test_a_missing_live_policies_dir_is_one_line_before_kafka(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "missing"
    line = usage_error(capsys, config, "--live-policies", str(missing), "--dry-run")
    assert line == f"moderator: --live-policies: {missing} is not a directory"
    line = usage_error(capsys, config, "--resume", "r1", "--live-policies", str(missing))
    assert line == f"moderator: --live-policies: {missing} is not a directory"


def test_help_and_examples_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, ["replay", "--help"])
    assert code == 0 and "--live-policies DIR" in out
    assert "moderator replay --from 2026-11-01 --to 2026-11-02 --live-policies" in out


def test_the_report_says_why_policies_were_not_compared(tmp_path: Path) -> None:
    """The report's policy diff is written after the run: a live policy directory that is
    missing makes it a line in the report, not an error that would lose the report."""
    from moderator.cli.replay_policies import policy_diff
    from moderator.policy.bundled import write_default_policy
    from moderator.settings import load_settings

    replayed = tmp_path / "next"
    write_default_policy(replayed)
    live = load_settings(None, {"policies.dir": tmp_path / "missing"})
    lines = policy_diff(live.policies.dir, replayed, live.tenancy)
    assert len(lines) == 1 and lines[0].startswith("not compared: "), lines
    assert "missing" in lines[0]


def test_a_run_compiles_each_policy_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replayed directory is read three times (checked before Kafka, served by the run's
    pipeline, compared with the live one for the report): each policy is compiled once."""
    from moderator.cli.preflight import check_policies
    from moderator.cli.replay_policies import policy_diff
    from moderator.policy.bundled import write_default_policy
    from moderator.service import build_policies
    from moderator.settings import load_settings
    from tests.policy_fixtures import count_compiles

    live_dir, replayed_dir = tmp_path / "live", tmp_path / "next"
    for directory, action in ((live_dir, "review"), (replayed_dir, "block")):
        write_default_policy(directory)
        (directory / "kids.yaml").write_text(
            f"on_error: {action}\nsurfaces:\n  chat:\n    on_error: block\n"
        )
    live = load_settings(None, {"policies.dir": live_dir})
    replayed = load_settings(None, {"policies.dir": replayed_dir})
    compiled = count_compiles(monkeypatch)
    served = check_policies(replayed).policies
    build_policies(replayed).close()
    diff = policy_diff(live.policies.dir, replayed_dir, live.tenancy)
    assert any("kids" in line for line in diff), diff
    kids = [("kids", "chat"), ("kids", "default")]
    assert sorted(served) == [("default", "default"), *kids]
    # kids once for each directory; default.yaml, the same file in both, once in all
    assert sorted(compiled) == [("default", "default"), *sorted(kids * 2)]


# -- checks a walkthrough found missing: each refused before Kafka, as one line ---------------


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A policy directory of its own, so that a run's settings check passes wherever the
    tests run from."""
    from moderator.policy.bundled import write_default_policy

    directory = tmp_path / "policies"
    write_default_policy(directory)
    return directory


@pytest.mark.parametrize("dry_run", [["--dry-run"], []])
def test_a_from_in_the_future_without_to_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], config: Path, policies: Path, dry_run: list[str]
) -> None:
    """Without --to the range ends now: a later --from is refused, not a ValueError from the
    offset lookup after Kafka was contacted."""
    flags = ["--policies", str(policies), "--from", "2030-01-01T00:00:00Z", *dry_run]
    line = usage_error(capsys, config, *flags)
    assert line == "moderator: --from: 2030-01-01T00:00:00Z is in the future (the range ends now)"


def test_a_bad_time_is_one_line_naming_the_flag_and_the_forms(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    line = usage_error(capsys, config, "--dry-run", "--to", "29/11/2026")
    assert line == (
        "moderator: --to: not an ISO 8601 time: '29/11/2026' (e.g. 2026-11-29T02:00:00Z; "
        "a date alone (2026-11-29) is midnight UTC, a time without an offset is UTC)"
    )


def test_the_same_date_twice_is_an_empty_range_saying_how_it_was_read(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    line = usage_error(capsys, config, "--dry-run", "--from", "2026-11-29", "--to", "2026-11-29")
    assert line == "moderator: --to: must be later than --from (both are 2026-11-29T00:00:00Z)"


@pytest.mark.parametrize(
    "window",
    [
        ["--from", "2026-11-28", "--to", "2026-11-29"],
        ["--from", "2026-11-28T00:00:00", "--to", "2026-11-29 00:00:00"],
        ["--from", "2026-11-28"],
        ["--to", "2026-11-29T02:00:00"],
        ["--from", "2026-11-28t00:00:00z", "--to", "2026-11-29T02:00:00.123456789+01:00"],
    ],
)
def test_dates_and_times_without_an_offset_go_on_to_kafka(
    capsys: pytest.CaptureFixture[str], config: Path, window: list[str]
) -> None:
    """As `audit query --since/--until` takes them: a date alone, a time without an offset."""
    code, out, err = run(capsys, ["replay", "--config", str(config), "--dry-run", *window])
    assert (code, out) == (1, ""), err
    assert CONTACTED in err


def test_a_future_date_without_to_is_refused_in_utc(
    capsys: pytest.CaptureFixture[str], config: Path, policies: Path
) -> None:
    line = usage_error(capsys, config, "--policies", str(policies), "--from", "2030-01-01")
    assert line == "moderator: --from: 2030-01-01T00:00:00Z is in the future (the range ends now)"


def test_a_future_range_with_its_to_goes_on_to_kafka(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    argv = ["replay", "--config", str(config), "--dry-run"]
    argv += ["--from", "2030-01-01T00:00:00Z", "--to", "2030-01-02T00:00:00Z"]
    code, out, err = run(capsys, argv)
    assert (code, out) == (1, ""), err
    assert CONTACTED in err


def another_runs_report(directory: Path, run_id: str = "r-old") -> bytes:
    """`directory` as a finished run leaves it: its plan and a report. The plan's bytes."""
    from moderator.replay.plan import save_plan
    from tests.test_replay_header import PLAN

    plan = dataclasses.replace(PLAN, run_id=run_id)
    save_plan(plan, directory)
    (directory / "report.json").write_text("{}\n", encoding="utf-8")
    return (directory / "run.json").read_bytes()


def test_a_new_run_refuses_a_report_directory_holding_another_run(
    capsys: pytest.CaptureFixture[str], config: Path, policies: Path, tmp_path: Path
) -> None:
    """Writing there would replace that run's plan and report: refused, nothing touched."""
    rep1 = tmp_path / "rep1"
    before = another_runs_report(rep1)
    line = usage_error(capsys, config, "--policies", str(policies), "--report", str(rep1))
    assert line == (
        f"moderator: --report {rep1} holds the report of run r-old; resume it with "
        f"--resume r-old --report {rep1} or choose another directory"
    )
    assert (rep1 / "run.json").read_bytes() == before
    assert sorted(p.name for p in rep1.iterdir()) == ["report.json", "run.json"]


def test_the_hint_leaves_out_the_runs_own_default_directory(
    capsys: pytest.CaptureFixture[str],
    config: Path,
    policies: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    another_runs_report(Path("replay-r-old"))
    line = usage_error(capsys, config, "--policies", str(policies), "--report", "replay-r-old")
    assert line == (
        "moderator: --report replay-r-old holds the report of run r-old; resume it with "
        "--resume r-old or choose another directory"
    )


def test_a_report_directory_with_a_plan_that_cannot_be_read_is_refused(
    capsys: pytest.CaptureFixture[str], config: Path, policies: Path, tmp_path: Path
) -> None:
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "run.json").write_text("{", encoding="utf-8")
    line = usage_error(capsys, config, "--policies", str(policies), "--report", str(rep))
    assert line.startswith(f"moderator: --report {rep}: {rep / 'run.json'} is not a replay plan")
    assert line.endswith("; choose another directory")


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_a_new_or_empty_report_directory_goes_on_to_kafka(
    capsys: pytest.CaptureFixture[str], config: Path, policies: Path, tmp_path: Path, state: str
) -> None:
    rep = tmp_path / "rep"
    if state != "missing":
        rep.mkdir()
    argv = ["replay", "--config", str(config), "--policies", str(policies), "--report", str(rep)]
    code, out, err = run(capsys, argv)
    assert (code, out) == (1, ""), err
    assert CONTACTED in err


def test_a_report_directory_holding_other_files_is_refused(
    capsys: pytest.CaptureFixture[str], config: Path, policies: Path, tmp_path: Path
) -> None:
    """The report would replace a report.md there and sit beside the rest: refused, untouched."""
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "report.md").write_text("an older report\n", encoding="utf-8")
    line = usage_error(capsys, config, "--policies", str(policies), "--report", str(rep))
    assert line == (
        f"moderator: --report {rep} holds other files and no replay plan (run.json): the report "
        "would overwrite some of them and sit beside the rest; choose an empty or new directory"
    )
    assert (rep / "report.md").read_text(encoding="utf-8") == "an older report\n"


def test_a_dry_run_refuses_a_policy_directory_a_run_would_refuse(
    capsys: pytest.CaptureFixture[str], config: Path, policies: Path, tmp_path: Path
) -> None:
    """A broken file is not "a tenant without a policy", and a missing directory is not an
    empty one: the dry run says what the run would say, before Kafka is contacted."""
    (policies / "kids.yaml").write_text("on_error: block\n  bad indent: [\n", encoding="utf-8")
    line = usage_error(capsys, config, "--dry-run", "--policies", str(policies))
    assert line.startswith(f"moderator: {policies / 'kids.yaml'}:"), line
    missing = tmp_path / "nosuchdir"
    line = usage_error(capsys, config, "--dry-run", "--policies", str(missing))
    assert "is not a directory" in line and str(missing) in line, line


def test_a_dry_run_writes_nothing_so_any_report_directory_will_do(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    rep = tmp_path / "rep"
    another_runs_report(rep)
    code, out, err = run(
        capsys, ["replay", "--config", str(config), "--dry-run", "--report", str(rep)]
    )
    assert (code, out) == (1, ""), err
    assert CONTACTED in err


@pytest.mark.parametrize("resume", [False, True])
def test_a_report_path_that_is_a_file_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], config: Path, policies: Path, tmp_path: Path, resume: bool
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory\n", encoding="utf-8")
    flags = ["--resume", "r1"] if resume else ["--policies", str(policies)]
    line = usage_error(capsys, config, *flags, "--report", str(afile))
    assert line == f"moderator: --report: {afile} exists and is not a directory"
    line = usage_error(capsys, config, *flags, "--report", str(afile / "sub"))
    assert line == f"moderator: --report: cannot create {afile / 'sub'}: {afile} is not a directory"


def test_a_dry_run_shows_the_range_as_read_in_utc(
    capsys: pytest.CaptureFixture[str],
    config: Path,
    policies: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A date alone is shown as the 00:00 UTC it was read as, a time without an offset with
    its Z, and the lookup is given those instants."""
    from moderator.replay.census import Census

    asked: dict[str, Any] = {}

    class Client:
        def close(self) -> None:
            pass

    def find_ranges(*_args: Any, **kwargs: Any) -> Any:
        asked.update(kwargs)
        return (), "timestamp lookup", []

    monkeypatch.setattr("moderator.ingest.startup.probe_cluster", lambda *a, **k: None)
    monkeypatch.setattr("moderator.ingest.kafka.make_consumer", lambda *a, **k: Client())
    monkeypatch.setattr("moderator.replay.ranges.find_ranges", find_ranges)
    monkeypatch.setattr("moderator.replay.census.take_census", lambda *a: Census())
    argv = ["replay", "--config", str(config), "--policies", str(policies), "--dry-run"]
    argv += ["--from", "2026-11-28", "--to", "2026-11-29T02:00:00"]
    code, out, err = run(capsys, argv)
    assert (code, err) == (0, ""), err
    assert out.splitlines()[0] == (
        "range: 2026-11-28T00:00:00Z .. 2026-11-29T02:00:00Z (timestamp lookup) on in.uploads"
    )
    start, end = datetime(2026, 11, 28, tzinfo=UTC), datetime(2026, 11, 29, 2, tzinfo=UTC)
    assert (asked["from_ms"], asked["to_ms"]) == (
        int(start.timestamp()) * 1000,
        int(end.timestamp()) * 1000,
    )
