"""GET /v1/verdicts/{event_id}/explanation says where the row was set, as `moderator explain`
does: the app `audit serve` builds and the command, under one settings file, give the same
document, `policy.row_origin` included while policies.dir compiles to the verdict's version
and left out (still 200) when the directory is missing, broken or changed (where the command
says why, the API leaves it out); a directory changed
while the server runs is read again, an unchanged one is not."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the audit API needs the api extra")
pytest.importorskip("uvicorn", reason="audit serve needs the api extra")

import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from moderator.audit.db.store import AuditStore
from moderator.audit.models import IncomingRecord
from moderator.audit.read.api_models import VerdictExplanation
from moderator.audit.read.tokens import token_hash
from moderator.cli.main import main
from moderator.errors import ErrorCode
from moderator.explain.render import explanation_json
from moderator.policy import check as policy_check
from tests.policy_fixtures import clear_moderator_env
from tests.test_explain import audit_record, demo, unsafe
from tests.test_explain_origin import attached, on_surface

TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0-kidsplace"
PATH = "/v1/verdicts/{}/explanation"
KIDSPLACE_ORIGIN = {
    "surface": None,
    "set_by": {f: "kidsplace.yaml" for f in ("mode", "action", "block_at", "review_at")},
    "overrides": {},
    "undeclared_surface": "post",  # kidsplace declares profile_photo only
}


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A copy of the bundled demo policies, which decided the stored verdicts."""
    with as_file(files("moderator") / "data" / "demo-policies") as found:
        return Path(shutil.copytree(found, tmp_path / "policies"))


@pytest.fixture
def config(tmp_path: Path, policies: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A settings file naming an audit store with two kidsplace verdicts, the token, and
    `policies` as policies.dir."""
    clear_moderator_env(monkeypatch)
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    records = [
        audit_record("k-1", demo("kidsplace"), assessment=unsafe("O6", 0.252)),
        audit_record("k-2", demo("kidsplace"), error=ErrorCode.CORRUPT_IMAGE, model=None),
    ]
    with AuditStore.open(url) as store:
        store.insert([IncomingRecord("moderation.audit", 0, n, r) for n, r in enumerate(records)])
    settings = {
        "audit": {"url": url, "api_tokens": {token_hash(TOKEN): ["kidsplace"]}},
        "policies": {"dir": str(policies)},
    }
    path = tmp_path / "settings.yaml"
    path.write_text(json.dumps(settings), encoding="utf-8")
    return path


def served_app(config: Path, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    """The app `moderator audit serve --config config` would run."""
    started: list[Any] = []

    def run(server: Any, sockets: list[Any] | None = None) -> None:
        started.append(server.config.app)
        for sock in sockets or []:
            sock.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    with socket.socket() as probe:  # a free port: the command binds it before uvicorn runs
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    assert main(["audit", "serve", "--config", str(config), "--port", port]) == 0
    (app,) = started
    assert isinstance(app, FastAPI)
    return app


@pytest.fixture
def client(config: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with TestClient(served_app(config, monkeypatch)) as test_client:
        yield test_client


def api_json(client: TestClient, event_id: str) -> dict[str, Any]:
    response = client.get(PATH.format(event_id), headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def cli_json(config: Path, event_id: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code = main(["explain", event_id, "--format", "json", "--config", str(config)])
    out, err = capsys.readouterr()
    assert code == 0, err
    document: dict[str, Any] = json.loads(out)
    return document


def test_the_api_document_is_the_cli_s_row_origin_included(
    client: TestClient, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = api_json(client, "k-1")
    assert body["policy"]["row_origin"] == KIDSPLACE_ORIGIN
    assert body == cli_json(config, "k-1", capsys)
    origin = (
        "O6 mode and action and block_at and review_at by kidsplace.yaml; "
        "surface post is not declared: the default rules apply"
    )
    assert {"step": "origin", "text": origin} in body["steps"]


def test_an_error_verdict_names_the_file_of_its_on_error_action_either_way(
    client: TestClient, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = api_json(client, "k-2")
    assert body["policy"]["row_origin"] == {
        "surface": None,
        "set_by": {"on_error": "kidsplace.yaml"},
        "overrides": {},
        "undeclared_surface": "post",
    }
    origin = (
        "on_error for corrupt_image by kidsplace.yaml; "
        "surface post is not declared: the default rules apply"
    )
    assert {"step": "origin", "text": origin} in body["steps"]
    assert body == cli_json(config, "k-2", capsys)


def _missing(policies: Path) -> None:
    shutil.rmtree(policies)


def _broken(policies: Path) -> None:
    (policies / "default.yaml").write_text("schema: [1\n", encoding="utf-8")


def _changed(policies: Path) -> None:
    path = policies / "kidsplace.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("review_at: 0.2}", "review_at: 0.25}"), encoding="utf-8")


@pytest.mark.parametrize("spoil", [_missing, _broken, _changed])
def test_without_the_deciding_policy_files_the_explanation_has_no_origin(
    client: TestClient,
    config: Path,
    policies: Path,
    capsys: pytest.CaptureFixture[str],
    spoil: Any,
) -> None:
    spoil(policies)
    body = api_json(client, "k-1")
    assert "row_origin" not in body["policy"]
    assert body["rule"]["text"] == "score 0.252 >= review_at 0.2 for O6 -> review"
    # Both say why: the command names the directory and its --policies flag, the API neither
    # the server's path nor a flag its clients cannot pass.
    command = cli_json(config, "k-1", capsys)
    (note,) = [s["text"] for s in command["steps"] if s["step"] == "origin"]
    assert note.startswith("not shown: ") and "pass --policies DIR" in note
    assert command["missing"] == [f"row origin: {note.removeprefix('not shown: ')}"]
    (served,) = [s["text"] for s in body["steps"] if s["step"] == "origin"]
    assert served.startswith("not shown: the audit server's policies.dir")
    assert served.endswith(
        "the audit server shows it while its policies.dir holds the policies "
        f"of version {body['policy']['version']}"
    )
    assert str(policies) not in json.dumps(body) and "--policies" not in served
    assert body["missing"] == [f"row origin: {served.removeprefix('not shown: ')}"]
    assert body == {
        **command,
        "missing": body["missing"],
        "steps": [s if s["step"] != "origin" else {**s, "text": served} for s in command["steps"]],
    }


def test_policy_files_changed_while_serving_are_read_again(
    client: TestClient, policies: Path
) -> None:
    default = policies / "default.yaml"
    kept = default.read_bytes()
    assert api_json(client, "k-1")["policy"]["row_origin"] == KIDSPLACE_ORIGIN
    _broken(policies)
    assert "row_origin" not in api_json(client, "k-1")["policy"]
    default.write_bytes(kept)
    assert api_json(client, "k-1")["policy"]["row_origin"] == KIDSPLACE_ORIGIN


def test_an_unchanged_directory_is_compiled_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    real = policy_check.check

    def counted(directory: Path, *args: Any, **kwargs: Any) -> Any:
        calls.append(directory)
        return real(directory, *args, **kwargs)

    monkeypatch.setattr(policy_check, "check", counted)
    for event_id in ("k-1", "k-2", "k-1", "k-1"):
        api_json(client, event_id)
    assert len(calls) == 1


def test_a_surface_override_keeps_its_from_and_to_in_the_api_model() -> None:
    document = explanation_json(attached(on_surface("comments")))
    model = VerdictExplanation.model_validate(document)
    assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == document
    assert document["policy"]["row_origin"]["overrides"] == {
        "action": {"from": "review", "to": "block"}
    }
