"""deploy/compose: the compose files are valid Compose Specification documents and the stack is
wired as docs/compose.md describes.

The files are validated against the Compose Specification's JSON schema as check-jsonschema
vendors it (pinned in the dev extra), and parsed, interpolated and merged by podman-compose
(`--dry-run config`, which needs no container engine). Then the checks of our own: every
dependency exists and waits for the right condition, MinIO notifies the topic the consumer
reads, the consumer runs exactly-once against a transactional single-node Kafka, every
MODERATOR_* variable is a real setting, the policies mounted into the consumer validate, the
gpu profile and its override point the consumer at the LMDeploy server.

The stack itself is never started here: its images come from a container registry. Without
check-jsonschema or podman-compose the tests that need them skip locally and fail with CI=true.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.resources
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from moderator.dev.kafka.config import min_isr, replication
from moderator.ingest.checkpoint import CLOSE_S, checkpoint_timeout_s, stop_budget_s
from moderator.ingest.topics import topic_specs
from moderator.policy.check import check
from moderator.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_DIR = ROOT / "deploy" / "compose"
BASE = COMPOSE_DIR / "compose.yaml"
GPU = COMPOSE_DIR / "compose.gpu.yaml"
DOC = ROOT / "docs" / "compose.md"

# The services each way of starting the stack runs.
BASE_SERVICES = {
    "kafka",
    "topics",
    "minio",
    "minio-setup",
    "postgres",
    "consumer",
    "audit-sink",
    "audit-api",
}
MODERATOR_SERVICES = {"topics", "consumer", "audit-sink", "audit-api"}
ONE_SHOTS = {"topics", "minio-setup"}
GPU_SERVICES = {"lmdeploy"}

_VAR = re.compile(
    r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}$]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)"
)


def missing_tool(message: str) -> None:
    """Skip (locally) or fail (CI=true) because a tool the test needs is not installed."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI installs the dev extra)", pytrace=False)
    pytest.skip(message)


# -- reading the files -----------------------------------------------------------------------


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict), path
    return document


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """`value` with compose's `$$`, `$NAME`, `${NAME}`, `${NAME-default}` and `${NAME:-default}`
    replaced, in every string of a YAML tree; any other `$` form is an error."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, default = match.group(2), match.group(3) or ""
        if operator == ":-":
            return env.get(name) or default
        if operator == "-":
            return env.get(name, default)
        return env.get(name, "")

    unsupported = _VAR.sub("", value)
    assert "$" not in unsupported, f"interpolation compose cannot do: {value!r}"
    return _VAR.sub(one, value)


def merged(*documents: dict[str, Any]) -> dict[str, Any]:
    """Later documents over earlier ones, mappings merged key by key (what the override file
    uses: `environment` and `depends_on` mappings)."""
    out: dict[str, Any] = {}
    for document in documents:
        out = _merge(out, document)
    return out


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def project(
    *, gpu: bool = False, env: Mapping[str, str] | None = None, profiles: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The compose model as `docker compose [-f compose.gpu.yaml] [--profile P] config` would
    resolve it (interpolated, merged); services of inactive profiles are left out."""
    files = [load(BASE)] + ([load(GPU)] if gpu else [])
    document: dict[str, Any] = interpolate(merged(*files), env or {})
    document["services"] = {
        name: service
        for name, service in document["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }
    return document


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    assert isinstance(raw, dict), "environment is written as a mapping"
    return {k: "" if v is None else str(v) for k, v in raw.items()}


def moderator_env(service: Mapping[str, Any]) -> dict[str, str]:
    return {k: v for k, v in environment(service).items() if k.startswith(ENV_PREFIX)}


def settings_of(
    service: Mapping[str, Any], monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> Settings:
    """The settings a moderator service starts with: its MODERATOR_* environment only."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in moderator_env(service).items():
        monkeypatch.setenv(name, value)
    return load_settings(overrides=overrides or None)


def consumer_service(*, gpu: bool = False) -> dict[str, Any]:
    """The consumer as the stack starts it (defaults for every interpolated variable)."""
    profiles = ("gpu",) if gpu else ()
    service: dict[str, Any] = project(gpu=gpu, profiles=profiles)["services"]["consumer"]
    return service


def uploads_bucket() -> str:
    """The bucket minio-setup subscribes to notifications (`mc event add local/<bucket> ...`)."""
    script = setup_script(project())
    (bucket,) = re.findall(r"mc event add local/([a-z0-9.-]+) ", script)
    return str(bucket)


def setup_script(document: Mapping[str, Any]) -> str:
    service = document["services"]["minio-setup"]
    assert service["entrypoint"][:2] == ["/bin/sh", "-ec"]
    (script,) = service["command"]
    assert isinstance(script, str)
    return script


def port_of(url: str) -> int:
    match = re.search(r":(\d+)(?:/|$)", url.split("://", 1)[-1])
    assert match, url
    return int(match.group(1))


# -- the Compose Specification schema -------------------------------------------------------


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    try:
        import check_jsonschema.builtin_schemas.vendor as vendor
    except ImportError:
        missing_tool("check-jsonschema (which vendors the Compose Specification schema)")
    text = importlib.resources.files(vendor).joinpath("compose-spec.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    Draft202012Validator.check_schema(schema)
    assert schema["title"] == "Compose Specification"
    return schema


def schema_errors(schema: dict[str, Any], document: Any) -> list[str]:
    validator = Draft202012Validator(schema)
    return [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(document)
    ]


@pytest.mark.parametrize("path", [BASE, GPU], ids=lambda p: p.name)
def test_the_files_validate_against_the_compose_specification(
    compose_schema: dict[str, Any], path: Path
) -> None:
    assert schema_errors(compose_schema, load(path)) == []


def test_the_resolved_projects_validate_against_the_compose_specification(
    compose_schema: dict[str, Any],
) -> None:
    for document in (project(), project(gpu=True, profiles=("gpu",))):
        assert schema_errors(compose_schema, document) == []


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        ((), "versionn", "3"),
        (("services", "consumer"), "enviroment", {"A": "b"}),
        (("services", "consumer", "depends_on", "topics"), "condition", "service_done"),
        (("services", "kafka", "healthcheck"), "interval", ["10s"]),
    ],
)
def test_the_schema_rejects_a_broken_file(
    compose_schema: dict[str, Any], where: tuple[str, ...], key: str, value: Any
) -> None:
    """The validation has teeth: one typo or wrong value in the real file is reported."""
    document = load(BASE)
    node = document
    for part in where:
        node = node[part]
    node[key] = value
    assert schema_errors(compose_schema, document) != []


def test_no_version_key() -> None:
    for path in (BASE, GPU):
        assert "version" not in load(path), f"{path.name}: the version key is obsolete"


# -- podman-compose: parse, interpolate, merge ------------------------------------------------


def podman_compose_config(
    tmp_path: Path, *, gpu: bool = False, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """`podman-compose --dry-run config` of the stack (with the gpu override and profile), in a
    clean environment plus `env`; an empty env file keeps a local deploy/compose/.env out."""
    if _podman_compose_module() is None:
        missing_tool("podman-compose (pip install podman-compose)")
    empty = tmp_path / "empty.env"
    empty.write_text("", encoding="utf-8")
    files = [BASE, GPU] if gpu else [BASE]
    command = [sys.executable, "-m", "podman_compose", "--dry-run", "--env-file", str(empty)]
    command += [item for path in files for item in ("-f", str(path))]
    command += ["--profile", "gpu"] if gpu else []
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    clean.update(env or {})
    done = subprocess.run(
        [*command, "config"],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document = yaml.safe_load(done.stdout)
    assert isinstance(document, dict), done.stdout
    return document


def _podman_compose_module() -> object | None:
    try:
        import podman_compose
    except ImportError:
        return None
    module: object = podman_compose
    return module


def test_podman_compose_resolves_the_default_stack(
    compose_schema: dict[str, Any], tmp_path: Path
) -> None:
    document = podman_compose_config(tmp_path)
    assert set(document["services"]) == BASE_SERVICES
    assert schema_errors(compose_schema, document) == []
    consumer = document["services"]["consumer"]
    assert environment(consumer)["MODERATOR_ENGINE__KIND"] == "nudenet"
    # Interpolation as our own reading of the file does it.
    ours = project()["services"]
    for name, service in document["services"].items():
        assert environment(service) == environment(ours[name]), name


def test_podman_compose_resolves_the_gpu_override_with_the_profile(tmp_path: Path) -> None:
    document = podman_compose_config(tmp_path, gpu=True)
    assert set(document["services"]) == BASE_SERVICES | GPU_SERVICES
    consumer = document["services"]["consumer"]
    assert environment(consumer)["MODERATOR_ENGINE__KIND"] == "openai"
    assert set(consumer["depends_on"]) == {"topics", "minio-setup", "lmdeploy"}
    assert environment(consumer) == environment(consumer_service(gpu=True))


def test_variables_from_the_environment_reach_the_services(tmp_path: Path) -> None:
    document = podman_compose_config(
        tmp_path,
        env={"ENGINE_KIND": "fake", "POSTGRES_PASSWORD": "s3cret", "MINIO_ROOT_USER": "admin"},
    )
    services = document["services"]
    assert environment(services["consumer"])["MODERATOR_ENGINE__KIND"] == "fake"
    assert environment(services["postgres"])["POSTGRES_PASSWORD"] == "s3cret"
    for name in MODERATOR_SERVICES:
        env = environment(services[name])
        assert ":s3cret@postgres:" in env["MODERATOR_AUDIT__URL"], name
        assert env["AWS_ACCESS_KEY_ID"] == "admin", name
    assert environment(services["minio"])["MINIO_ROOT_USER"] == "admin"


def test_the_minio_setup_script_is_valid_shell() -> None:
    shell = shutil.which("sh")
    assert shell is not None
    script = setup_script(project())
    done = subprocess.run([shell, "-n", "-e", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # `$$` reached the shell as `$`: the variables are the shell's, not compose's.
    assert '"$MINIO_ROOT_USER"' in script
    assert '"$events"' in script


# -- dependencies, profiles, health, restarts, ports, volumes -------------------------------


def all_projects() -> Iterator[tuple[str, dict[str, Any]]]:
    yield "default", project()
    yield "gpu", project(gpu=True, profiles=("gpu",))


def test_every_dependency_exists_and_waits_for_the_right_condition() -> None:
    for label, document in all_projects():
        services = document["services"]
        for name, service in services.items():
            depends = service.get("depends_on") or {}
            assert isinstance(depends, dict), f"{label}: {name}: depends_on with conditions"
            for target, rule in depends.items():
                assert target in services, f"{label}: {name} depends on missing {target}"
                condition = rule["condition"]
                if condition == "service_completed_successfully":
                    assert target in ONE_SHOTS, f"{label}: {name} waits for {target} to exit"
                elif condition == "service_healthy":
                    assert "test" in services[target].get("healthcheck", {}), target
                else:
                    pytest.fail(f"{label}: {name} -> {target}: {condition}")


def test_the_consumer_waits_for_the_topics_and_the_notification_setup() -> None:
    depends = consumer_service()["depends_on"]
    assert depends["topics"] == {"condition": "service_completed_successfully"}
    assert depends["minio-setup"] == {"condition": "service_completed_successfully"}
    setup = project()["services"]["minio-setup"]["depends_on"]
    assert setup["topics"] == {"condition": "service_completed_successfully"}


def test_profiles() -> None:
    services = load(BASE)["services"]
    with_profiles = {name: s["profiles"] for name, s in services.items() if "profiles" in s}
    assert with_profiles == {"lmdeploy": ["gpu"]}
    assert set(project()["services"]) == BASE_SERVICES
    assert set(project(profiles=("gpu",))["services"]) == BASE_SERVICES | GPU_SERVICES
    # The override adds no service and switches no profile: it only changes the consumer.
    assert set(load(GPU)["services"]) == {"consumer"}


def test_healthchecks_and_restart_policies() -> None:
    services = project(profiles=("gpu",))["services"]
    for name, service in services.items():
        if name in ONE_SHOTS:
            assert service["restart"] == "no", name
            continue
        assert service["restart"] == "unless-stopped", name
        check_ = service["healthcheck"]
        assert check_["test"][0] in ("CMD", "CMD-SHELL"), name
        assert {"interval", "timeout", "retries", "start_period"} <= set(check_), name
    assert services["topics"]["healthcheck"] == {"disable": True}


def test_healthchecks_probe_the_ports_the_services_listen_on() -> None:
    services = project(profiles=("gpu",))["services"]
    for name in ("consumer", "audit-sink"):
        probe = services[name]["healthcheck"]["test"][-1]
        port = int(environment(services[name])["MODERATOR_HTTP__PORT"])
        assert f"http://127.0.0.1:{port}/readyz" in probe, name
    api = services["audit-api"]
    command = api["command"]
    assert command[:2] == ["audit", "serve"]
    port = command[command.index("--port") + 1]
    assert command[command.index("--host") + 1] == "0.0.0.0"  # noqa: S104
    assert f"http://127.0.0.1:{port}/healthz" in api["healthcheck"]["test"][-1]
    lmdeploy = services["lmdeploy"]["command"]
    port = lmdeploy[lmdeploy.index("--server-port") + 1]
    assert f"http://127.0.0.1:{port}/v1/models" in services["lmdeploy"]["healthcheck"]["test"][-1]


def test_published_ports_listen_on_loopback_only() -> None:
    for name, service in project(profiles=("gpu",))["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)


def test_named_volumes_are_declared_and_used() -> None:
    document = project(profiles=("gpu",))
    declared = set(document["volumes"])
    used = {
        volume.split(":", 1)[0]
        for service in document["services"].values()
        for volume in service.get("volumes", [])
        if not volume.startswith((".", "/"))
    }
    assert used == declared == {"kafka-data", "minio-data", "minio-queue", "postgres-data"}


# -- the settings of the moderator services ---------------------------------------------------


def is_setting(name: str) -> bool:
    """Whether MODERATOR_A__B names a field of the settings model (A.B)."""
    model: Any = Settings
    for part in name.removeprefix(ENV_PREFIX).lower().split("__"):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        model = fields[part].annotation
    return True


def test_every_moderator_variable_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    projects = [project(), project(gpu=True, profiles=("gpu",))]
    names = {n for d in projects for s in d["services"].values() for n in moderator_env(s)}
    assert names, "no MODERATOR_* variables found"
    assert sorted(n for n in names if not is_setting(n)) == []
    for document in projects:
        for name in MODERATOR_SERVICES:
            settings_of(document["services"][name], monkeypatch)  # raises on a bad value


def test_the_services_share_one_kafka_s3_and_audit_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = project()["services"]
    shared = {
        name: settings_of(services[name], monkeypatch).model_dump(
            include={"kafka", "s3", "tenancy", "audit"}, mode="json"
        )
        for name in MODERATOR_SERVICES
    }
    # audit.api_tokens is the API's alone.
    for values in shared.values():
        values["audit"].pop("api_tokens")
    assert len({json.dumps(v, sort_keys=True) for v in shared.values()}) == 1


def test_the_consumer_runs_exactly_once_on_a_transactional_kafka(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = project()["services"]
    for consumer in (consumer_service(), consumer_service(gpu=True)):
        settings = settings_of(consumer, monkeypatch)
        assert settings.kafka.delivery == "exactly_once"
        assert settings.instance_id == "compose-consumer-0"
        host, port = settings.kafka.bootstrap_servers.split(":")
        assert host == "kafka"
    kafka = environment(services["kafka"])
    # The single node holds every replica of the transaction state and offsets topics: the
    # same values the development cluster uses for one node.
    assert kafka["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == str(replication(1))
    assert kafka["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == str(min_isr(1))
    assert kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == str(replication(1))
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert f"INTERNAL://kafka:{port}" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(kafka["KAFKA_NODE_ID"] + "@kafka:")
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"


def _seconds(duration: str) -> float:
    """A compose duration such as `75s` or `1m30s`."""
    found = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert found is not None and duration, f"unexpected duration {duration!r}"
    return 60 * int(found.group(1) or 0) + int(found.group(2) or 0)


def test_stop_grace_periods_cover_a_clean_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    for consumer in (consumer_service(), consumer_service(gpu=True)):
        settings = settings_of(consumer, monkeypatch)
        needed = stop_budget_s(settings.flow.drain_grace_s, settings.kafka.transaction_timeout_ms)
        assert _seconds(consumer["stop_grace_period"]) >= needed
    sink = project()["services"]["audit-sink"]
    settings = settings_of(sink, monkeypatch)
    needed = settings.flow.drain_grace_s + checkpoint_timeout_s(
        settings.kafka.transaction_timeout_ms
    )
    assert _seconds(sink["stop_grace_period"]) >= needed + CLOSE_S


def test_the_topics_service_creates_the_specs_of_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topics = project()["services"]["topics"]
    assert topics["command"] == ["topics", "create"]
    specs = {s.role: s for s in topic_specs(settings_of(topics, monkeypatch).kafka)}
    assert set(specs) == {"uploads", "verdicts", "audit", "dlq", "replay"}
    for spec in specs.values():
        assert spec.replication_factor == 1, spec.name
        assert spec.configs["min.insync.replicas"] == "1", spec.name
    assert specs["verdicts"].name == "moderation.verdicts"
    assert specs["verdicts"].configs["cleanup.policy"] == "compact"
    assert specs["uploads"].configs["cleanup.policy"] == "delete"
    assert (specs["uploads"].partitions, specs["dlq"].partitions) == (12, 3)


def test_minio_notifies_the_topic_the_consumer_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    document = project()
    minio = environment(document["services"]["minio"])
    settings = settings_of(consumer_service(), monkeypatch)
    targets = {
        name.removeprefix("MINIO_NOTIFY_KAFKA_ENABLE_")
        for name, value in minio.items()
        if name.startswith("MINIO_NOTIFY_KAFKA_ENABLE_") and value == "on"
    }
    assert len(targets) == 1, targets
    (target,) = targets
    assert minio[f"MINIO_NOTIFY_KAFKA_TOPIC_{target}"] == settings.kafka.topics.uploads
    assert minio[f"MINIO_NOTIFY_KAFKA_BROKERS_{target}"] == settings.kafka.bootstrap_servers
    assert minio[f"MINIO_NOTIFY_KAFKA_QUEUE_DIR_{target}"].startswith("/")
    assert minio["MINIO_SITE_REGION"] == settings.s3.region
    script = setup_script(document)
    add = re.findall(r"mc event add (\S+) (\S+) (.*)", script)
    assert add == [
        (f"local/{uploads_bucket()}", f"arn:minio:sqs::{target}:kafka", "--event put ;;")
    ]
    assert f"mc mb --ignore-existing local/{uploads_bucket()}" in script
    # Uploads under <tenant>/ in that bucket are the tenant's: key_prefix rule, and the bucket
    # is one a tenant's own prefix may be read from.
    assert settings.tenancy.rule == "key_prefix"
    assert uploads_bucket() in settings.tenancy.upload_buckets
    assert settings.s3.endpoint_url == "http://minio:9000"
    anchors = settings.audit.anchor_s3_uri or ""
    assert f"mc mb --ignore-existing local/{anchors[5:].split('/')[0]}" in script


def test_credentials_agree_between_services(monkeypatch: pytest.MonkeyPatch) -> None:
    services = project()["services"]
    minio = environment(services["minio"])
    postgres = environment(services["postgres"])
    settings = settings_of(services["audit-sink"], monkeypatch)
    url = f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@postgres:5432/"
    assert settings.audit.url == url + postgres["POSTGRES_DB"]
    for name in MODERATOR_SERVICES:
        env = environment(services[name])
        assert env["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"], name
    assert environment(services["minio-setup"])["MINIO_ROOT_USER"] == minio["MINIO_ROOT_USER"]


def test_the_audit_api_has_a_token_and_reads_the_sinks_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = project()["services"]
    api = settings_of(services["audit-api"], monkeypatch)
    assert list(api.audit.api_tokens.values()) == [["*"]]
    assert hashlib.sha256(b"compose-demo-token-not-for-production").hexdigest() in (
        api.audit.api_tokens
    )
    assert api.audit.url == settings_of(services["audit-sink"], monkeypatch).audit.url
    assert "compose-demo-token-not-for-production" in DOC.read_text(encoding="utf-8")


# -- images, policies, the gpu profile --------------------------------------------------------


def test_moderator_services_build_the_cpu_target_of_the_repository_dockerfile() -> None:
    services = project()["services"]
    for name in MODERATOR_SERVICES:
        build = services[name]["build"]
        assert (COMPOSE_DIR / build["context"]).resolve() == ROOT, name
        assert build["target"] == "cpu", name
        assert services[name]["image"] == "moderator:cpu", name
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, re.MULTILINE | re.IGNORECASE)
    assert "cpu" in stages
    assert 'ENTRYPOINT ["moderator"]' in dockerfile
    for name in MODERATOR_SERVICES:
        command = services[name]["command"]
        assert command[0] in ("run", "audit", "topics"), name  # arguments to the entrypoint


def test_the_mounted_policies_validate_and_cover_the_documented_tenants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer = consumer_service()
    settings = settings_of(consumer, monkeypatch)
    (mount,) = [v for v in consumer["volumes"] if v.endswith(":ro") and "policies" in v]
    source, target, _ = mount.split(":")
    assert target == str(settings.policies.dir)
    directory = (COMPOSE_DIR / source).resolve()
    result = check(directory, settings.tenancy)
    assert result.errors == ()
    tenants = {tenant for tenant, _ in result.policies} - {"default"}
    assert tenants == {"acme", "kids"}
    for tenant in tenants:
        policy = result.policies[(tenant, "default")]
        assert policy.allows_object(uploads_bucket(), f"{tenant}/photo.jpg"), tenant
        assert not policy.allows_object(uploads_bucket(), f"other/{tenant}.jpg"), tenant
    # The base every tenant extends is the repository's own default policy, unchanged.
    shipped = (ROOT / "policies" / "default.yaml").read_bytes()
    assert (directory / "default.yaml").read_bytes() == shipped, (
        "copy policies/default.yaml to deploy/compose/policies/default.yaml"
    )


def test_the_gpu_override_points_the_consumer_at_lmdeploy(monkeypatch: pytest.MonkeyPatch) -> None:
    document = project(gpu=True, profiles=("gpu",))
    lmdeploy = document["services"]["lmdeploy"]
    settings = settings_of(document["services"]["consumer"], monkeypatch)
    assert settings.engine.kind == "openai"
    command = lmdeploy["command"]
    assert command[:4] == ["lmdeploy", "serve", "api_server", "/models/QwenGuard-v1.2-3B"]
    assert command[command.index("--backend") + 1] == "turbomind"
    assert (
        settings.engine.base_url
        == f"http://lmdeploy:{command[command.index('--server-port') + 1]}/v1"
    )
    assert settings.engine.model == command[command.index("--model-name") + 1]
    assert port_of(settings.engine.base_url) == 23333
    # The weights are mounted read-only where the command reads them; nothing is downloaded.
    (weights,) = lmdeploy["volumes"]
    assert weights.endswith(":/models/QwenGuard-v1.2-3B:ro")
    assert environment(lmdeploy)["HF_HUB_OFFLINE"] == "1"
    (device,) = lmdeploy["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert lmdeploy["image"].startswith("openmmlab/lmdeploy:")
    # The default consumer keeps the CPU engine.
    assert settings_of(consumer_service(), monkeypatch).engine.kind == "nudenet"


# -- the documentation ------------------------------------------------------------------------


def test_the_documentation_covers_every_service_port_and_volume() -> None:
    text = DOC.read_text(encoding="utf-8")
    document = project(profiles=("gpu",))
    for name, service in document["services"].items():
        assert f"`{name}`" in text, f"docs/compose.md does not name service {name}"
        for port in service.get("ports", []):
            host_port = port.split(":")[1]
            assert host_port in text, f"docs/compose.md does not give port {host_port} ({name})"
    for volume in document["volumes"]:
        assert f"`{volume}`" in text, f"docs/compose.md does not name volume {volume}"
    for command in (
        "docker compose -f deploy/compose/compose.yaml up -d",
        "mc cp",
        "audit query",
        "kafka-console-consumer.sh",
        "compose.gpu.yaml",
        "--profile gpu",
        "down",
    ):
        assert command in text, command
    for variable in sorted(set(re.findall(r"\$\{([A-Z_]+)", BASE.read_text(encoding="utf-8")))):
        assert f"`{variable}`" in text, f"docs/compose.md does not document {variable}"
    # Commands in the page name only services that exist.
    named = []
    for line in (raw.strip().removesuffix("\\").strip() for raw in text.splitlines()):
        words = shlex.split(line) if line.startswith("docker compose") else []
        for verb in ("exec", "logs", "run"):
            if verb in words and words.index(verb) + 1 < len(words):
                rest = [w for w in words[words.index(verb) + 1 :] if not w.startswith("-")]
                assert rest and rest[0] in document["services"], line
                named.append(rest[0])
    assert {"kafka", "audit-sink"} <= set(named)
