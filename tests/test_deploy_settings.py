"""Every setting the deployment files set exists: the MODERATOR_* variables of the compose
files and the Kubernetes manifests, and the keys of the settings files they mount, are checked
against the settings model (a misspelt key would otherwise be ignored or fail only at start)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from moderator.errors import ConfigError
from moderator.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = sorted((ROOT / "deploy" / "compose").glob("compose*.yaml"))
K8S = sorted((ROOT / "deploy" / "k8s").rglob("*.yaml"))
NESTING = "__"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings section an annotation names (through Optional), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, UnionType):
        for arg in get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def _is_mapping(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        return any(_is_mapping(a) for a in get_args(annotation))
    return origin is dict or annotation is dict


def setting_problem(path: tuple[str, ...]) -> str | None:
    """Why `path` (lower-case keys) names no setting, or None when it does. Keys under a
    mapping setting (kafka.client, audit.retention_days, ...) are the user's own."""
    model: type[BaseModel] = Settings
    for depth, key in enumerate(path):
        field = model.model_fields.get(key)
        if field is None:
            return f"{'.'.join(path[: depth + 1])} is not a setting"
        nested = _model_of(field.annotation)
        rest = path[depth + 1 :]
        if not rest:
            return None
        if nested is not None:
            model = nested
        elif _is_mapping(field.annotation):
            return None
        else:
            return f"{'.'.join(path[: depth + 1])} has no sub-keys ({'.'.join(path)})"
    return None


def _env_names(environment: Any) -> Iterator[str]:
    if isinstance(environment, dict):
        yield from (str(k) for k in environment)
    elif isinstance(environment, list):
        yield from (str(item).split("=", 1)[0] for item in environment)


def _compose_env() -> Iterator[tuple[str, str]]:
    for path in COMPOSE:
        doc = yaml.safe_load(path.read_text()) or {}
        for name, service in (doc.get("services") or {}).items():
            for var in _env_names((service or {}).get("environment")):
                yield f"{path.name}:{name}", var


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _k8s_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in K8S:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                yield path, doc


def _k8s_env() -> Iterator[tuple[str, str]]:
    for path, doc in _k8s_docs():
        for node in _walk(doc):
            for entry in node.get("env") or [] if isinstance(node.get("env"), list) else []:
                if isinstance(entry, dict) and "name" in entry:
                    yield str(path.relative_to(ROOT)), str(entry["name"])


def _env_path(var: str) -> tuple[str, ...]:
    return tuple(var[len(ENV_PREFIX) :].lower().split(NESTING))


def _moderator_vars(found: Iterator[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted({(where, var) for where, var in found if var.startswith(ENV_PREFIX)})


def test_the_checker_tells_settings_from_misspellings() -> None:
    assert setting_problem(("kafka", "bootstrap_servers")) is None
    assert setting_problem(("kafka", "client", "sasl.password")) is None  # a mapping's keys
    assert setting_problem(("engine", "concurency")) == "engine.concurency is not a setting"
    assert setting_problem(("instance_id", "x")) == "instance_id has no sub-keys (instance_id.x)"
    assert _env_path("MODERATOR_KAFKA__TOPIC_SPECS__UPLOADS__PARTITIONS") == (
        "kafka",
        "topic_specs",
        "uploads",
        "partitions",
    )


def test_compose_and_manifests_exist_and_set_settings() -> None:
    assert COMPOSE and K8S, "deploy/compose and deploy/k8s hold the deployment files"
    assert _moderator_vars(_compose_env()), "the compose file sets no MODERATOR_* variable"
    assert _moderator_vars(_k8s_env()), "the manifests set no MODERATOR_* variable"


@pytest.mark.parametrize(
    ("where", "var"), _moderator_vars(_compose_env()) + _moderator_vars(_k8s_env())
)
def test_every_moderator_variable_is_a_setting(where: str, var: str) -> None:
    assert setting_problem(_env_path(var)) is None, f"{where}: {var}"


SETTINGS_FILES = sorted((ROOT / "deploy").rglob("moderator.yaml"))


def test_the_settings_files_the_manifests_mount_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/**/moderator.yaml (the --config file of the Kubernetes base): every key is a
    setting (the settings model forbids unknown keys) and every value is valid."""
    assert SETTINGS_FILES, "no settings file under deploy/"
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)  # the file alone
    for path in SETTINGS_FILES:
        settings = load_settings(path)
        assert settings.kafka.delivery == "exactly_once", path


def test_a_misspelt_key_in_a_settings_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "moderator.yaml"
    bad.write_text("engine:\n  concurency: 2\n")
    with pytest.raises(ConfigError, match="concurency"):
        load_settings(bad)
