"""The Kubernetes manifests (deploy/k8s): the base and the GPU overlay render with kustomize,
every object validates against the Kubernetes JSON schemas (kubernetes-validate, strict) and the
KEDA CRD schemas (.ci/k8s-schemas.sh), and the manifests agree with the settings model, the
CLI, the images and each other: probes on the named port and the real paths, the ScaledObject
on the StatefulSet within the uploads topic's partitions, the policy ConfigMap mounted whole,
the PodDisruptionBudget on the consumer pods, Secret references only, real settings only.

kustomize comes from `kubectl kustomize` (or a `kustomize` binary); without it, and without the
KEDA schemas, the tests that need them skip locally and fail with CI=true.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn, get_origin

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel
from referencing import Registry, Resource

from moderator.errors import ConfigError
from moderator.ingest.checkpoint import checkpoint_timeout_s, stop_budget_s
from moderator.obs.http import ObsServer
from moderator.obs.telemetry import Telemetry
from moderator.policy.check import check
from moderator.policy.registry import PolicyRegistry
from moderator.settings import ENV_PREFIX, Settings, TopicSpecSettings, load_settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
RENDERS = {"base": K8S / "base", "gpu": K8S / "overlays" / "gpu"}
DOCS = ROOT / "docs" / "kubernetes.md"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA_SCRIPT = ROOT / ".ci" / "k8s-schemas.sh"
SCHEMA_CACHE = Path(os.environ.get("K8S_SCHEMA_CACHE", ROOT / ".cache" / "k8s-schemas"))
KEDA_SCHEMAS = SCHEMA_CACHE / "keda-2.10.1"

# The oldest Kubernetes minor the manifests claim to work on, and the newest kubernetes-validate
# knows. Every built-in object must validate against both.
K8S_VERSIONS = ("1.30", "1.37")

SECRET = "moderator-credentials"
SECRET_KEYS = {
    "kafka-sasl-username",
    "kafka-sasl-password",
    "aws-access-key-id",
    "aws-secret-access-key",
    "audit-db-url",
    "audit-api-tokens",
    "dsa-puid-salt",
}
# Values a Secret key could hold, so that the settings built from the environment validate.
SECRET_SAMPLES = {
    "audit-db-url": "postgresql://moderator:secret@postgres:5432/moderator",
    "audit-api-tokens": json.dumps({"ab" * 32: ["*"]}),
}
POD_NAME = "moderator-0"
RUN_AS = 10001
# What the consumer's shutdown needs beyond draining and the final checkpoint: closing the
# engine, the producer and the consumer (leaving the group).
CLOSE_MARGIN_S = 10
# The process's own share of the memory bound (docs/operations.md): interpreter, libraries,
# clients, outputs waiting for a checkpoint.
BASELINE_BYTES = 100 << 20
CACHE_ENTRY_BYTES = 1024
MEMORY_HEADROOM = 1.25
# KEDA's names for kafka.sasl_mechanism.
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}

Obj = dict[str, Any]


def unavailable(reason: str) -> NoReturn:
    """Skip (locally) or fail (CI=true): CI must not pass by skipping the manifest checks."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must validate deploy/k8s)", pytrace=False)
    pytest.skip(reason)


def kustomize_command() -> list[str]:
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize") or shutil.which("kustomize", path=SCHEMA_CACHE / "bin")
    if kustomize is not None:
        return [kustomize, "build"]
    unavailable(
        "neither kubectl nor kustomize is on PATH, nor in "
        f"{SCHEMA_CACHE / 'bin'}: run bash {SCHEMA_SCRIPT.relative_to(ROOT)}"
    )


@cache
def _render_text(name: str) -> str:
    done = subprocess.run(
        [*kustomize_command(), str(RENDERS[name])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kustomize {RENDERS[name]} failed:\n{done.stderr}"
    return done.stdout


@dataclass(frozen=True)
class Rendered:
    name: str
    objects: list[Obj]

    def all(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        found = [o for o in self.all(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def config_map(self, prefix: str) -> Obj:
        """The ConfigMap named `prefix`, or `prefix-<hash>` as the generator names it."""
        found = [
            o
            for o in self.all("ConfigMap")
            if re.fullmatch(re.escape(prefix) + r"(-[a-z0-9]{10})?", o["metadata"]["name"])
        ]
        assert len(found) == 1, f"expected one ConfigMap {prefix}, found {len(found)}"
        return found[0]

    def workloads(self) -> Iterator[tuple[Obj, Obj]]:
        """(object, pod template) of every StatefulSet, Deployment and CronJob."""
        for obj in self.objects:
            if obj["kind"] in ("StatefulSet", "Deployment"):
                yield obj, obj["spec"]["template"]
            elif obj["kind"] == "CronJob":
                yield obj, obj["spec"]["jobTemplate"]["spec"]["template"]

    def containers(self) -> Iterator[tuple[Obj, Obj, Obj]]:
        """(object, pod spec, container) of every container."""
        for obj, template in self.workloads():
            spec = template["spec"]
            for container in spec.get("initContainers", []) + spec["containers"]:
                yield obj, spec, container


@pytest.fixture(scope="module", params=sorted(RENDERS))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return Rendered(request.param, list(yaml.safe_load_all(_render_text(request.param))))


@pytest.fixture(scope="module")
def base() -> Rendered:
    return Rendered("base", list(yaml.safe_load_all(_render_text("base"))))


@pytest.fixture(scope="module")
def gpu() -> Rendered:
    return Rendered("gpu", list(yaml.safe_load_all(_render_text("gpu"))))


def label(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- the images' own environment ------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) per Dockerfile instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@cache
def image_env(tag: str) -> dict[str, str]:
    """The ENV of the Dockerfile stage named like the image tag (moderator:cpu -> cpu), with what
    it inherits from earlier stages; empty without a Dockerfile or such a stage."""
    if not DOCKERFILE.is_file():
        return {}
    stages: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for word, rest in _instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if word == "FROM":
            parts = rest.split()
            current = dict(stages.get(parts[0], {}))
            if len(parts) >= 3 and parts[1].upper() == "AS":
                stages[parts[2]] = current
        elif word == "ENV":
            for token in shlex.split(rest):
                key, sep, value = token.partition("=")
                if sep:
                    current[key] = value
    return dict(stages.get(tag, {}))


# -- settings as a container sees them --------------------------------------------------------


def is_setting(env_name: str) -> bool:
    """Whether MODERATOR_A__B names a settings key: a field at every level, ending on a value
    (or inside a free-form mapping such as kafka.client)."""
    parts = env_name.removeprefix(ENV_PREFIX).lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        return i == len(parts) - 1 or get_origin(annotation) is dict
    return True


def env_value(item: Obj) -> str:
    """The value a container would see for one env entry."""
    if "value" in item:
        return str(item["value"])
    source = item["valueFrom"]
    if "secretKeyRef" in source:
        return SECRET_SAMPLES.get(source["secretKeyRef"]["key"], "sample")
    if "fieldRef" in source:
        assert source["fieldRef"]["fieldPath"] == "metadata.name", item
        return POD_NAME
    raise AssertionError(f"unexpected env source {item}")


def container_env(container: Obj) -> dict[str, str]:
    """The image's ENV, then the container's env (which wins)."""
    image = container["image"]
    env = image_env(image.rsplit(":", 1)[1]) if ":" in image else {}
    env.update({item["name"]: env_value(item) for item in container.get("env", [])})
    return env


def command_line(container: Obj) -> list[str]:
    words = [*container.get("command", []), *container.get("args", [])]
    if words[:2] == ["/bin/sh", "-c"]:
        return shlex.split(" ".join(words[2:]))
    return words


def flag(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


def mounted_config_map(rendered: Rendered, spec: Obj, container: Obj, path: str) -> tuple[Obj, Obj]:
    """(the ConfigMap holding the file at `path` in this container, its volume mount)."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        directory = PurePosixPath(mount["mountPath"])
        if PurePosixPath(path).parent == directory:
            name = volumes[mount["name"]]["configMap"]["name"]
            cm = next(o for o in rendered.all("ConfigMap") if o["metadata"]["name"] == name)
            return cm, mount
    raise AssertionError(f"{path}: no ConfigMap is mounted at its directory")


def effective_settings(
    rendered: Rendered,
    spec: Obj,
    container: Obj,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Settings:
    """The settings the container's command builds: its --config file from the mounted
    ConfigMap, then its environment (the image's, then its own)."""
    config = flag(command_line(container), "--config")
    assert config is not None, f"{container['name']}: no --config"
    cm, _mount = mounted_config_map(rendered, spec, container, config)
    file = tmp_path / PurePosixPath(config).name
    file.write_text(cm["data"][PurePosixPath(config).name], encoding="utf-8")
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in container_env(container).items():
        monkeypatch.setenv(name, value)
    return load_settings(file)


@pytest.fixture
def settings_of(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[[Rendered, Obj, Obj], Settings]:
    def build(rendered: Rendered, spec: Obj, container: Obj) -> Settings:
        return effective_settings(rendered, spec, container, monkeypatch, tmp_path)

    return build


def consumer(rendered: Rendered) -> tuple[Obj, Obj, Obj]:
    sts = rendered.get("StatefulSet", "moderator")
    spec = sts["spec"]["template"]["spec"]
    return sts, spec, spec["containers"][0]


# -- schemas --------------------------------------------------------------------------------


def k8s_errors(objects: list[Obj], version: str) -> list[str]:
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.absolute_path)
            errors.append(f"{label(obj)}: {where}: {exc.message}")
    return errors


def builtin(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if not o["apiVersion"].startswith("keda.sh/")]


def _strict(node: Any) -> Any:
    """Unknown fields rejected, as the API server's strict field validation does: every
    object schema with named properties and no additionalProperties gets false."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("io.k8s."):
            out["$ref"] = f"{DEFINITIONS_ID}#/$defs/{ref.removesuffix('#')}"
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"


@cache
def _definitions() -> Resource[Any]:
    folder = f"v{K8S_VERSIONS[-1]}.0-local-strict"
    path = resources.files("kubernetes_validate") / "kubernetes-json-schema" / folder
    contents = json.loads((path / "_definitions.json").read_text(encoding="utf-8"))
    assert contents["$id"] == DEFINITIONS_ID
    return Resource.from_contents(contents)


@cache
def keda_validator(kind: str) -> jsonschema.protocols.Validator:
    path = KEDA_SCHEMAS / f"{kind.lower()}.json"
    if not path.is_file():
        unavailable(f"no KEDA schema at {path}: run bash {SCHEMA_SCRIPT.relative_to(ROOT)}")
    schema = _strict(json.loads(path.read_text(encoding="utf-8")))
    registry: Registry[Any] = Registry().with_resource(DEFINITIONS_ID, _definitions())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def keda_errors(objects: list[Obj]) -> list[str]:
    errors = []
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            for error in keda_validator(obj["kind"]).iter_errors(obj):
                where = ".".join(str(p) for p in error.absolute_path)
                errors.append(f"{label(obj)}: {where}: {error.message}")
    return errors


# -- rendering and schemas ------------------------------------------------------------------

BASE_OBJECTS = {
    "ServiceAccount/moderator",
    "StatefulSet/moderator",
    "Service/moderator",
    "PodDisruptionBudget/moderator",
    "ScaledObject/moderator",
    "TriggerAuthentication/moderator-kafka",
    "Deployment/moderator-audit-sink",
    "Service/moderator-audit-sink",
    "PodDisruptionBudget/moderator-audit-sink",
    "Deployment/moderator-audit-api",
    "Service/moderator-audit-api",
    "PodDisruptionBudget/moderator-audit-api",
    "CronJob/moderator-dsa-export",
    "NetworkPolicy/moderator-consumer",
    "NetworkPolicy/moderator-audit-sink",
    "NetworkPolicy/moderator-audit-api",
    "NetworkPolicy/moderator-dsa-export",
    "ConfigMap/moderator-policies",
}


def test_each_render_holds_the_expected_objects_and_no_namespace(rendered: Rendered) -> None:
    names = {label(o) for o in rendered.objects if o["kind"] != "ConfigMap"}
    names.add("ConfigMap/" + rendered.config_map("moderator-policies")["metadata"]["name"])
    expected = BASE_OBJECTS | (
        {"PersistentVolumeClaim/moderator-models"} if rendered.name == "gpu" else set()
    )
    assert names == expected
    assert rendered.config_map("moderator-config")["metadata"]["name"] != "moderator-config"
    assert [label(o) for o in rendered.objects if "namespace" in o["metadata"]] == []
    # Values of secrets never live in the manifests, only references to them.
    assert rendered.all("Secret") == []


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_objects_validate_against_the_kubernetes_schemas(
    rendered: Rendered, version: str
) -> None:
    objects = builtin(rendered.objects)
    assert len(objects) == len(rendered.objects) - 2  # all but the two KEDA objects
    assert k8s_errors(objects, version) == []


def test_keda_objects_validate_against_the_crd_schemas(rendered: Rendered) -> None:
    keda = [o for o in rendered.objects if o["apiVersion"].startswith("keda.sh/")]
    assert {o["kind"] for o in keda} == {"ScaledObject", "TriggerAuthentication"}
    assert keda_errors(keda) == []


def test_the_schema_checks_reject_typos_and_unknown_fields(base: Rendered) -> None:
    """The validation above can fail: a misspelt field, a wrong type, an unknown field."""
    scaled = copy.deepcopy(base.get("ScaledObject", "moderator"))
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    auth = copy.deepcopy(base.get("TriggerAuthentication", "moderator-kafka"))
    auth["spec"]["secretTargetRef"][0]["secret"] = auth["spec"]["secretTargetRef"][0].pop("name")
    assert len(keda_errors([scaled])) == 1
    assert len(keda_errors([auth])) == 2  # `name` missing, `secret` unknown
    sts = copy.deepcopy(base.get("StatefulSet", "moderator"))
    sts["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    pdb = copy.deepcopy(base.get("PodDisruptionBudget", "moderator"))
    pdb["spec"]["maxUnavailable"] = [1]
    assert len(k8s_errors([sts, pdb], K8S_VERSIONS[0])) == 2


# -- settings -------------------------------------------------------------------------------


def test_every_moderator_variable_is_a_setting_and_the_settings_load(
    rendered: Rendered, settings_of: Callable[[Rendered, Obj, Obj], Settings]
) -> None:
    seen = 0
    for obj, spec, container in rendered.containers():
        names = [e["name"] for e in container.get("env", [])]
        unknown = [n for n in names if n.startswith(ENV_PREFIX) and not is_setting(n)]
        assert unknown == [], f"{label(obj)}: not settings: {unknown}"
        settings_of(rendered, spec, container)  # raises ConfigError naming a bad key
        seen += 1
    assert seen == 4
    assert is_setting("MODERATOR_KAFKA__CLIENT__SOCKET_TIMEOUT_MS")
    assert not is_setting("MODERATOR_DSA_PUID_SALT")
    assert not is_setting("MODERATOR_ENGINE__LMDEPLOY__MAX_BATCH")


def test_the_settings_file_has_only_real_keys(rendered: Rendered, tmp_path: Path) -> None:
    text = rendered.config_map("moderator-config")["data"]["moderator.yaml"]
    file = tmp_path / "moderator.yaml"
    file.write_text(text, encoding="utf-8")
    settings = load_settings(file)  # extra keys are refused with a ConfigError
    assert settings.kafka.group_id == yaml.safe_load(text)["kafka"]["group_id"]
    file.write_text(text + "\nflows:\n  drain_grace: 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"flows: unknown key; did you mean 'flow'"):
        load_settings(file)


def test_the_consumer_takes_its_instance_id_from_the_pod_name(
    rendered: Rendered, settings_of: Callable[[Rendered, Obj, Obj], Settings]
) -> None:
    _sts, spec, container = consumer(rendered)
    refs = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container["env"]
        if "fieldRef" in e.get("valueFrom", {})
    }
    assert refs == {"MODERATOR_INSTANCE_ID": "metadata.name"}
    settings = settings_of(rendered, spec, container)
    assert settings.instance_id == POD_NAME
    assert settings.kafka.transactional_id is None  # the default, stable per pod name
    assert settings.transactional_id == f"moderator-{settings.kafka.group_id}-{POD_NAME}"


# -- the consumer StatefulSet -----------------------------------------------------------------


def test_the_consumer_is_a_parallel_statefulset_scaled_by_keda(rendered: Rendered) -> None:
    sts, _spec, container = consumer(rendered)
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert "replicas" not in sts["spec"], "the ScaledObject owns the replica count"
    service = rendered.get("Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert matches(service["spec"]["selector"], labels)
    assert container["args"][0] == "run"
    image = "moderator:gpu" if rendered.name == "gpu" else "moderator:cpu"
    assert container["image"] == image


def test_termination_grace_covers_draining_and_the_final_checkpoint(
    rendered: Rendered, settings_of: Callable[[Rendered, Obj, Obj], Settings]
) -> None:
    checked = 0
    for obj, spec, container in rendered.containers():
        if command_line(container)[:2] not in (["run", "--config"], ["audit", "sink"]):
            continue
        settings = settings_of(rendered, spec, container)
        if command_line(container)[0] == "run":
            needed = stop_budget_s(
                settings.flow.drain_grace_s, settings.kafka.transaction_timeout_ms
            )
        else:  # the sink: its drain, its last offsets commit, exporting its anchors
            checkpoint_s = checkpoint_timeout_s(settings.kafka.transaction_timeout_ms)
            needed = settings.flow.drain_grace_s + checkpoint_s + CLOSE_MARGIN_S
        grace = spec["terminationGracePeriodSeconds"]
        assert grace >= needed, f"{label(obj)}: {grace} s < {needed} s"
        checked += 1
    assert checked == 2


def test_probes_use_the_named_port_and_the_served_paths(
    rendered: Rendered, settings_of: Callable[[Rendered, Obj, Obj], Settings]
) -> None:
    for name in ("StatefulSet/moderator", "Deployment/moderator-audit-sink"):
        kind, obj_name = name.split("/")
        obj = rendered.get(kind, obj_name)
        spec = obj["spec"]["template"]["spec"]
        container = spec["containers"][0]
        settings = settings_of(rendered, spec, container)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": settings.http.port}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    api = rendered.get("Deployment", "moderator-audit-api")["spec"]["template"]["spec"]
    container = api["containers"][0]
    words = command_line(container)
    assert words[:2] == ["audit", "serve"]
    assert flag(words, "--host") == "0.0.0.0"  # noqa: S104 - reachable from the kubelet
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "api": int(flag(words, "--port") or 0)
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "api"}
    assert container["livenessProbe"]["tcpSocket"] == {"port": "api"}


def test_the_probe_paths_are_served() -> None:
    """/healthz and /readyz of `run` and `audit sink`, /healthz of `audit serve`."""
    telemetry = Telemetry()
    server = ObsServer(telemetry, "127.0.0.1", 0)
    try:
        for path, statuses in (("/healthz", {200}), ("/readyz", {200, 503}), ("/nope", {404})):
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{server.port}{path}", timeout=5
                ) as answer:
                    status = answer.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            assert status in statuses, path
    finally:
        server.close()
    pytest.importorskip("fastapi", reason="the audit API needs the api extra")
    from moderator.audit.read.api import create_app

    app = create_app(lambda: pytest.fail("no store is opened"), {"ab" * 32: ["*"]})
    assert "get" in app.openapi()["paths"]["/healthz"]


def test_every_pod_runs_as_non_root_on_a_read_only_root(rendered: Rendered) -> None:
    for obj, template in rendered.workloads():
        spec = template["spec"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == RUN_AS, label(obj)
        assert spec["automountServiceAccountToken"] is False, label(obj)
        assert spec["serviceAccountName"] == "moderator", label(obj)
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, label(obj)
            assert security["allowPrivilegeEscalation"] is False, label(obj)
            assert security["capabilities"] == {"drop": ["ALL"]}, label(obj)
            writable = {
                m["mountPath"]
                for m in container["volumeMounts"]
                if "emptyDir" in volumes[m["name"]] and not m.get("readOnly", False)
            }
            assert "/tmp" in writable, label(obj)
            home = container_env(container).get("HOME", "")
            assert any(PurePosixPath(home).is_relative_to(w) for w in writable), label(obj)


def test_memory_limits_cover_the_documented_bound(
    rendered: Rendered, settings_of: Callable[[Rendered, Obj, Obj], Settings]
) -> None:
    """docs/operations.md, "Memory bound": start-up + decode budget + buffered bytes + objects
    being fetched + prefetch + verdict cache, plus headroom; the engine comes on top."""
    for obj, spec, container in rendered.containers():
        resources_ = container["resources"]
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources_[part]), f"{label(obj)}: {part}"
        if obj["kind"] != "StatefulSet":
            continue
        s = settings_of(rendered, spec, container)
        bound = (
            BASELINE_BYTES
            + s.fetch.decode_budget_bytes
            + s.flow.high_buffered_bytes
            + s.fetch.concurrency * s.fetch.max_object_bytes
            + s.kafka.queued_max_messages_kbytes * 1024
            + s.cache.max_entries * CACHE_ENTRY_BYTES
        )
        limit = quantity_bytes(resources_["limits"]["memory"])
        assert limit >= bound * MEMORY_HEADROOM, f"{label(obj)}: {limit} < {bound} x headroom"
        assert quantity_bytes(resources_["requests"]["memory"]) == limit


def quantity_bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity.removesuffix(suffix)) * factor
    return int(quantity)


# -- policies -------------------------------------------------------------------------------


def test_the_policy_configmap_holds_valid_policies_mounted_whole(
    rendered: Rendered,
    settings_of: Callable[[Rendered, Obj, Obj], Settings],
    tmp_path: Path,
) -> None:
    cm = rendered.config_map("moderator-policies")
    assert cm["metadata"]["name"] == "moderator-policies", "no hash suffix: updated in place"
    mounted = 0
    tenancy = Settings().tenancy
    for obj, spec, container in rendered.containers():
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = [
            m
            for m in container["volumeMounts"]
            if volumes[m["name"]].get("configMap", {}).get("name") == "moderator-policies"
        ]
        for mount in mounts:
            assert "subPath" not in mount and "subPathExpr" not in mount, label(obj)
            assert mount.get("readOnly") is True, label(obj)
        if container["args"][:1] == ["run"] or obj["kind"] == "CronJob":
            settings = settings_of(rendered, spec, container)
            assert [m["mountPath"] for m in mounts] == [str(settings.policies.dir)], label(obj)
            assert settings.policies.poll_interval_s > 0
            mounted += 1
            tenancy = settings.tenancy
    assert mounted == 2
    directory = tmp_path / "policies"
    directory.mkdir()
    for name, text in cm["data"].items():
        (directory / name).write_text(text, encoding="utf-8")
    result = check(directory, tenancy)
    assert result.errors == ()
    assert {"default", "kids", "medical", "museum", "news"} <= set(result.files)


def _atomic_configmap_dir(directory: Path, files: dict[str, str], generation: int) -> None:
    """Write `files` the way the kubelet updates a ConfigMap volume: a new timestamped folder,
    the `..data` link swapped to it in one rename, one link per key into `..data`."""
    folder = directory / f"..2026_01_01_00_00_0{generation}.000000001"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    staging = directory / "..data_tmp"
    staging.symlink_to(folder.name)
    staging.replace(directory / "..data")
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    for old in directory.glob("..2026_*"):
        if old != folder:
            shutil.rmtree(old)


def test_a_configmap_update_reaches_the_policy_registry(base: Rendered, tmp_path: Path) -> None:
    """Why no subPath: the kubelet swaps `..data` and the registry, polling the mount, sees
    the new content without a restart."""
    files = dict(base.config_map("moderator-policies")["data"])
    assert "on_error: block" in files["kids.yaml"]
    directory = tmp_path / "policies"
    directory.mkdir()
    _atomic_configmap_dir(directory, files, 1)
    settings = Settings()
    registry = PolicyRegistry(directory, settings.tenancy)
    before = registry.resolve("kids", "default")
    assert before is not None and registry.errors == ()
    files["kids.yaml"] = files["kids.yaml"].replace("on_error: block", "on_error: review")
    _atomic_configmap_dir(directory, files, 2)
    assert registry.reload() is True
    after = registry.resolve("kids", "default")
    assert after is not None and after.version != before.version
    assert registry.errors == ()
    assert set(registry.tenants()) == {"default", "kids", "medical", "museum", "news"}


# -- scaling and disruption -----------------------------------------------------------------


def test_the_scaledobject_scales_the_consumer_within_the_partitions(
    rendered: Rendered, settings_of: Callable[[Rendered, Obj, Obj], Settings]
) -> None:
    sts, spec, container = consumer(rendered)
    settings = settings_of(rendered, spec, container)
    scaled = rendered.get("ScaledObject", "moderator")["spec"]
    assert scaled["scaleTargetRef"] == {
        "apiVersion": sts["apiVersion"],
        "kind": "StatefulSet",
        "name": sts["metadata"]["name"],
    }
    partitions = settings.kafka.topic_specs.uploads.partitions
    assert partitions == TopicSpecSettings().partitions  # the spec moderator.yaml states
    assert 2 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= partitions
    [trigger] = scaled["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["bootstrapServers"] == settings.kafka.bootstrap_servers
    assert meta["consumerGroup"] == settings.kafka.group_id
    assert meta["topic"] == settings.kafka.topics.uploads
    assert meta["allowIdleConsumers"] == "false"
    assert meta["offsetResetPolicy"] == "earliest"
    assert int(meta["lagThreshold"]) > 0
    assert settings.kafka.sasl_mechanism is not None
    assert meta["sasl"] == KEDA_SASL[settings.kafka.sasl_mechanism]
    assert meta["tls"] == (
        "enable" if settings.kafka.security_protocol == "SASL_SSL" else "disable"
    )
    auth = rendered.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {
        "username": (SECRET, "kafka-sasl-username"),
        "password": (SECRET, "kafka-sasl-password"),
    }


def test_disruption_budgets_and_services_select_their_own_pods(rendered: Rendered) -> None:
    pods = {
        label(obj): template["metadata"]["labels"]
        for obj, template in rendered.workloads()
        if obj["kind"] != "CronJob"
    }
    owners = {
        "PodDisruptionBudget/moderator": "StatefulSet/moderator",
        "PodDisruptionBudget/moderator-audit-sink": "Deployment/moderator-audit-sink",
        "PodDisruptionBudget/moderator-audit-api": "Deployment/moderator-audit-api",
        "Service/moderator": "StatefulSet/moderator",
        "Service/moderator-audit-sink": "Deployment/moderator-audit-sink",
        "Service/moderator-audit-api": "Deployment/moderator-audit-api",
    }
    for name, owner in owners.items():
        kind, obj_name = name.split("/")
        obj = rendered.get(kind, obj_name)
        selector = obj["spec"]["selector"]
        selector = selector.get("matchLabels", selector) if kind != "Service" else selector
        selected = {workload for workload, labels in pods.items() if matches(selector, labels)}
        assert selected == {owner}, name
        if kind == "PodDisruptionBudget":
            assert obj["spec"]["maxUnavailable"] == 1
    workload = rendered.get("StatefulSet", "moderator")
    assert (
        rendered.get("PodDisruptionBudget", "moderator")["spec"]["selector"]
        == workload["spec"]["selector"]
    )


# -- secrets and network --------------------------------------------------------------------


def secret_refs(rendered: Rendered) -> set[tuple[str, str]]:
    refs = set()
    for _obj, _spec, container in rendered.containers():
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                refs.add((ref["name"], ref["key"]))
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                refs.add((source["secretRef"]["name"], "*"))
    for auth in rendered.all("TriggerAuthentication"):
        refs |= {(r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    return refs


def test_credentials_come_from_one_secret_with_documented_keys(rendered: Rendered) -> None:
    refs = secret_refs(rendered)
    assert {name for name, _key in refs} == {SECRET}
    assert {key for _name, key in refs} == SECRET_KEYS
    text = DOCS.read_text(encoding="utf-8")
    assert {key for key in SECRET_KEYS if f"`{key}`" not in text} == set()
    # Only the AWS keys may be absent (workload identity instead).
    for _obj, _spec, container in rendered.containers():
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                assert ref.get("optional", False) == ref["key"].startswith("aws-"), item["name"]


def test_network_policies_cover_every_pod_with_the_traffic_it_needs(
    rendered: Rendered, settings_of: Callable[[Rendered, Obj, Obj], Settings]
) -> None:
    policies = rendered.all("NetworkPolicy")
    needs = {"consumer": {53, 9093, 443}, "audit-sink": {53, 9093, 5432, 443}}
    needs |= {"audit-api": {53, 5432}, "dsa-export": {53, 5432}}
    for obj, template in rendered.workloads():
        labels = template["metadata"]["labels"]
        covering = [p for p in policies if matches(p["spec"]["podSelector"]["matchLabels"], labels)]
        assert len(covering) == 1, label(obj)
        policy = covering[0]["spec"]
        assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
        allowed = set()
        for rule in policy["egress"]:
            for port in rule["ports"]:
                allowed |= set(range(port["port"], port.get("endPort", port["port"]) + 1))
        assert needs[labels["app.kubernetes.io/component"]] <= allowed, label(obj)
        named = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        for rule in policy["ingress"]:
            assert {p["port"] for p in rule["ports"]} <= named, label(obj)
            assert rule["from"], label(obj)
    _sts, spec, container = consumer(rendered)
    settings = settings_of(rendered, spec, container)
    ports = {
        int(server.rsplit(":", 1)[1]) for server in settings.kafka.bootstrap_servers.split(",")
    }
    assert ports <= needs["consumer"]


# -- the GPU overlay ------------------------------------------------------------------------


def test_the_gpu_overlay_runs_lmdeploy_on_one_gpu(
    gpu: Rendered, settings_of: Callable[[Rendered, Obj, Obj], Settings]
) -> None:
    _sts, spec, container = consumer(gpu)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    settings = settings_of(gpu, spec, container)
    engine = settings.engine
    assert engine.kind == "lmdeploy"
    # TurboMind's request slots stay busy (docs/engine-lmdeploy.md, "Throughput"), and the
    # in-flight mark covers what the engine works on at once (docs/operations.md, "Sizing").
    assert engine.concurrency * engine.batch_size >= engine.lmdeploy.max_batch_size
    assert settings.flow.high_in_flight >= 4 * engine.concurrency * engine.batch_size
    volumes = {v["name"]: v for v in spec["volumes"]}
    [models] = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
    assert models["readOnly"] is True
    claim = volumes[models["name"]]["persistentVolumeClaim"]
    pvc = gpu.get("PersistentVolumeClaim", claim["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"] and claim["readOnly"] is True
    assert PurePosixPath(str(engine.model)).is_relative_to("/models")
    # Only the consumer needs the GPU image.
    images = {label(obj): c["image"] for obj, _spec, c in gpu.containers()}
    assert images.pop("StatefulSet/moderator") == "moderator:gpu"
    assert set(images.values()) == {"moderator:cpu"}


def test_the_base_consumer_needs_no_gpu(base: Rendered) -> None:
    for obj, spec, container in base.containers():
        assert "nvidia.com/gpu" not in container["resources"]["limits"], label(obj)
        assert "tolerations" not in spec and "nodeSelector" not in spec, label(obj)
