"""A replay's plan (run.json): its JSON form, the atomic write and the errors of a bad file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from moderator.errors import ConfigError
from moderator.replay.plan import PLAN_FILE, PLAN_VERSION, RunPlan, load_plan, save_plan
from moderator.replay.request import EventFilter, OffsetRange

RUN = "r20261205T231500Z-3f9a"


def a_plan(run_id: str = RUN, **changes: Any) -> RunPlan:
    fields: dict[str, Any] = {
        "run_id": run_id,
        "created_at": "2026-12-05T23:15:00Z",
        "uploads_topic": "uploads",
        "output_topic": "moderation.replay",
        "ranges": (OffsetRange(0, 100, 200), OffsetRange(2, 0, 0), OffsetRange(5, 7, 9)),
        "event_filter": EventFilter(
            tenants=frozenset({"kids", "acme"}), from_ms=1_700_000_000_000, to_ms=None, sample=0.25
        ),
        "range_text": "2026-11-29T02:00:00Z..2026-11-30T02:00:00Z",
        "lookup": "timestamp lookup",
        "policies_dir": "/srv/policies-next",
        "engine": "guard",
        "model": "llama-guard-4",
        "reuse_assessments": True,
        "rate": 12.5,
        "output_start": {5: 40, 0: 3},
    }
    fields.update(changes)
    return RunPlan(**fields)


def test_plan_round_trips_through_json_text() -> None:
    plan = a_plan()
    text = json.dumps(plan.to_json())
    assert RunPlan.from_json(json.loads(text)) == plan


def test_plan_round_trips_with_defaults_and_nulls() -> None:
    plan = a_plan(
        event_filter=EventFilter(),
        model=None,
        rate=None,
        reuse_assessments=False,
        output_start={},
        ranges=(),
    )
    assert RunPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


def test_plan_json_is_stable_for_people_and_diffs() -> None:
    data = a_plan().to_json()
    assert data["version"] == PLAN_VERSION
    assert data["event_filter"]["tenants"] == ["acme", "kids"]
    assert list(data["output_start"]) == ["0", "5"]
    assert data["ranges"][0] == {"partition": 0, "start": 100, "end": 200}


def test_events_upper_bound_counts_every_offset_of_the_ranges() -> None:
    assert a_plan().events_upper_bound == 100 + 0 + 2


def test_save_then_load(tmp_path: Path) -> None:
    directory = tmp_path / "reports" / RUN
    path = save_plan(a_plan(), directory)
    assert path == directory / PLAN_FILE
    assert load_plan(directory, RUN) == a_plan()
    assert path.read_text(encoding="utf-8").endswith("}\n")


def test_save_leaves_no_temporary_file(tmp_path: Path) -> None:
    save_plan(a_plan(), tmp_path)
    save_plan(a_plan(rate=1.0), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [PLAN_FILE]
    assert load_plan(tmp_path, RUN).rate == 1.0


def test_a_failing_write_keeps_the_old_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_plan(a_plan(), tmp_path)
    before = (tmp_path / PLAN_FILE).read_bytes()

    def half_written(obj: Any, out: Any, **kwargs: Any) -> None:
        out.write('{"run_id": ')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", half_written)
    with pytest.raises(OSError, match="No space left"):
        save_plan(a_plan(rate=99.0), tmp_path)
    assert (tmp_path / PLAN_FILE).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [PLAN_FILE]


def test_an_interrupted_write_keeps_the_old_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_plan(a_plan(), tmp_path)
    before = (tmp_path / PLAN_FILE).read_bytes()

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_plan(a_plan(rate=99.0), tmp_path)
    assert (tmp_path / PLAN_FILE).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [PLAN_FILE]


def test_load_without_a_plan_asks_for_the_report_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_plan(tmp_path, RUN)
    message = str(info.value)
    assert message.startswith(f"--resume {RUN}: no {PLAN_FILE} in {tmp_path}")
    assert "--report" in message


def test_load_refuses_another_runs_plan(tmp_path: Path) -> None:
    save_plan(a_plan("r-other"), tmp_path)
    with pytest.raises(ConfigError, match=rf"^--resume {RUN}: .* belongs to run r-other$"):
        load_plan(tmp_path, RUN)


def write_plan_text(directory: Path, text: str) -> None:
    (directory / PLAN_FILE).write_text(text, encoding="utf-8")


def valid_json() -> dict[str, Any]:
    return a_plan().to_json()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        '{"run_id": "r1"',
        "\x00\x01",
        "[]",
        "null",
        '"run.json"',
        "42",
        "{}",
    ],
)
def test_load_reports_a_corrupt_file_as_config_error(tmp_path: Path, text: str) -> None:
    write_plan_text(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"^--resume {RUN}: .*{PLAN_FILE} is not a replay plan"):
        load_plan(tmp_path, RUN)


@pytest.mark.parametrize("version", [None, 0, 2, "1"])
def test_load_refuses_an_unknown_version(tmp_path: Path, version: object) -> None:
    data = valid_json()
    if version is None:
        del data["version"]
    else:
        data["version"] = version
    write_plan_text(tmp_path, json.dumps(data))
    with pytest.raises(ConfigError, match=r"is not a replay plan: unknown plan version"):
        load_plan(tmp_path, RUN)


def broken(data: dict[str, Any], what: str) -> None:
    if what == "missing field":
        del data["output_topic"]
    elif what == "unknown filter field":
        data["event_filter"]["colour"] = "red"
    elif what == "range not an object":
        data["ranges"] = [[0, 1, 2]]
    elif what == "filter not an object":
        data["event_filter"] = "all"
    elif what == "bad output start":
        data["output_start"] = {"zero": 1}
    elif what == "output start not an object":
        data["output_start"] = [[0, 3]]


@pytest.mark.parametrize(
    "what",
    [
        "missing field",
        "unknown filter field",
        "range not an object",
        "filter not an object",
        "bad output start",
        "output start not an object",
    ],
)
def test_load_reports_a_wrong_shape_as_config_error(tmp_path: Path, what: str) -> None:
    data = valid_json()
    broken(data, what)
    write_plan_text(tmp_path, json.dumps(data))
    with pytest.raises(ConfigError, match=r"is not a replay plan"):
        load_plan(tmp_path, RUN)


def test_load_reports_an_unreadable_plan_as_config_error(tmp_path: Path) -> None:
    (tmp_path / PLAN_FILE).mkdir()  # a directory where the file should be
    with pytest.raises(ConfigError, match=r"is not a replay plan"):
        load_plan(tmp_path, RUN)
