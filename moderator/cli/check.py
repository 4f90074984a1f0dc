"""`moderator run --check`: settings, Kafka, S3, engine and policies checked, nothing consumed.

Prints a table (check, status, detail) on stdout and exits 0 when every check passes, 2 when
any fails. The checks after `config` run side by side, each bounded by kafka.startup_timeout_s;
none consumes, produces or creates anything (Kafka: a metadata request; S3: HeadBucket).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moderator.cli.lines import error_line
from moderator.cli.policy import table
from moderator.errors import ConfigError, ModeratorError
from moderator.settings import Settings, load_settings

OK, FAIL, SKIPPED = "ok", "FAIL", "skipped"
SERVICE_TOPICS = ("uploads", "verdicts", "audit", "dlq")  # the roles `run` reads or writes
_MARGIN_S = 2.0  # past the timeout, so that a check's own, more precise timeout error wins

Check = Callable[[Settings], str]


@dataclass(frozen=True)
class CheckResult:
    check: str
    status: str  # OK, FAIL or SKIPPED
    detail: str


def cmd_check(config: Path | None, overrides: dict[str, Any]) -> int:
    """Run every check, print the table (stdout); 0 when all passed, else 2 with one line on
    stderr naming the checks that failed."""
    results = run_checks(config, overrides)
    for line in table(("check", "status", "detail"), [_row(r) for r in results]):
        print(line)
    failed = [r.check for r in results if r.status == FAIL]
    if failed:
        print(
            f"moderator: run --check: {len(failed)} of {len(results)} checks failed: "
            f"{', '.join(failed)}",
            file=sys.stderr,
        )
    return 0 if all(r.status == OK for r in results) else 2


def run_checks(config: Path | None, overrides: dict[str, Any]) -> list[CheckResult]:
    """`config` first (the settings load); the others only with valid settings."""
    from moderator.engine.factory import check_model_flag

    try:
        settings = load_settings(config, overrides)
        check_model_flag(settings.engine.kind, overrides.get("engine.model"))
    except ConfigError as exc:
        failed = CheckResult("config", FAIL, error_line(exc))
        return [failed, *(CheckResult(name, SKIPPED, "needs valid settings") for name in CHECKS)]
    from moderator.logs import configure_cli_logging

    configure_cli_logging(settings.log)
    source = str(config) if config is not None else "no config file"
    loaded = CheckResult(
        "config",
        OK,
        f"{source}; engine.kind={settings.engine.kind}, kafka.delivery={settings.kafka.delivery}",
    )
    return [loaded, *bounded(settings, CHECKS, timeout_s=settings.kafka.startup_timeout_s)]


def bounded(
    settings: Settings,
    checks: Mapping[str, Check],
    *,
    timeout_s: float,
    margin_s: float = _MARGIN_S,
) -> list[CheckResult]:
    """Each check in a daemon thread, all started at once; a check still running
    `timeout_s` (+ a margin) later fails and is left behind (the process exits soon after)."""
    outcomes: dict[str, CheckResult] = {}
    lock = threading.Lock()

    def one(name: str, check: Check) -> None:
        try:
            result = CheckResult(name, OK, check(settings))
        except Exception as exc:  # any failure is the check's verdict, shown as one line
            result = CheckResult(name, FAIL, error_line(exc))
        with lock:
            outcomes[name] = result

    threads = [
        threading.Thread(target=one, args=(name, check), name=f"check-{name}", daemon=True)
        for name, check in checks.items()
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s + margin_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    late = f"no answer within {timeout_s:g} s (kafka.startup_timeout_s)"
    with lock:
        return [outcomes.get(name, CheckResult(name, FAIL, late)) for name in checks]


def check_kafka(settings: Settings) -> str:
    """A broker answers, and the topics `run` uses exist (or kafka.create_topics makes them)."""
    from moderator.ingest.startup import probe_cluster

    kafka = settings.kafka
    present = probe_cluster(kafka, client_id=f"moderator-check-{settings.instance_id}")
    wanted = [getattr(kafka.topics, role) for role in SERVICE_TOPICS]
    missing = [topic for topic in wanted if topic not in present]
    if missing and not kafka.create_topics:
        raise ConfigError(
            f"{kafka.bootstrap_servers} answers, but topic(s) missing: {', '.join(missing)} "
            "(create them with `moderator topics create`, or set kafka.create_topics)"
        )
    refused = _broker_refusals(settings)
    if refused:
        raise ConfigError(f"{refused[0]} (lower kafka.transaction_timeout_ms, or raise the limit)")
    detail = f"{kafka.bootstrap_servers}: topics {', '.join(wanted)}"
    if missing:
        return f"{detail}; {', '.join(missing)} created at start-up (kafka.create_topics)"
    return f"{detail} exist"


def _broker_refusals(settings: Settings) -> list[str]:
    """What the brokers' settings would refuse at start-up (exactly once: the transaction
    timeout); none where the cluster cannot describe its brokers (the embedded mock)."""
    from moderator.cli.topics import admin_client
    from moderator.ingest.topic_admin import TopicAdminError, broker_warnings

    kafka = settings.kafka
    if kafka.delivery != "exactly_once":
        return []
    admin = admin_client(settings, quiet=True)
    try:
        return broker_warnings(admin, kafka, timeout_s=kafka.startup_timeout_s)
    except TopicAdminError:
        return []


def check_s3(settings: Settings) -> str:
    """HeadBucket on every bucket uploads may come from (tenancy.upload_buckets, or the
    buckets of tenancy.bucket_map)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from moderator.fetch.s3 import build_s3_client

    tenancy = settings.tenancy
    if tenancy.rule == "bucket_map":
        buckets, setting = sorted(tenancy.bucket_map), "tenancy.bucket_map"
    else:
        buckets, setting = sorted(set(tenancy.upload_buckets)), "tenancy.upload_buckets"
    if not buckets:
        raise ConfigError(f"no bucket to read uploads from ({setting} is empty)")
    where = settings.s3.endpoint_url or "AWS S3"
    client = build_s3_client(settings.s3)
    problems: list[str] = []
    for bucket in buckets:
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            problems.append(f"bucket {bucket}: {_s3_reason(exc.response, setting)}")
        except BotoCoreError as exc:  # endpoint or credentials: the same for every bucket
            raise ModeratorError(f"{where}: {exc} (s3.* settings, AWS credentials)") from exc
    if problems:
        raise ModeratorError(f"{where}: " + "; ".join(problems))
    return f"{where}: bucket(s) {', '.join(buckets)} reachable"


def _s3_reason(response: Mapping[str, Any], setting: str) -> str:
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("404", "NoSuchBucket") or status == 404:
        return f"does not exist ({setting})"
    if code in ("403", "AccessDenied") or status == 403:
        return "access denied (HeadBucket needs s3:ListBucket on it; check the AWS credentials)"
    if code in ("301", "PermanentRedirect") or status == 301:
        return "is in another region (s3.region)"
    return f"{code or 'error'} (HTTP {status})"


def check_engine(settings: Settings) -> str:
    """Build the engine as `run` would (load, warm-up where configured), run its own
    readiness check where it has one (the openai engine asks its server), close it."""
    from moderator.engine.factory import build_engine

    engine = build_engine(settings.engine)
    try:
        readiness = getattr(engine, "check", None)
        if callable(readiness):
            readiness()
        info = engine.info
    finally:
        engine.close()
    name = info.engine if info.name == info.engine else f"{info.engine} {info.name}"
    detail = name + (f" {info.revision}" if info.revision else "")
    if info.smoke_test and info.engine == "fake":
        detail += " (a stand-in for tests: its verdicts are drawn, not judged)"
    elif info.smoke_test and info.engine == "openai":
        detail += " (the server marks it a smoke-test model: its verdicts are not meaningful)"
    elif info.smoke_test:
        detail += " (smoke-test checkpoint with random weights)"
    return f"{detail} answers" if info.engine == "openai" else f"{detail} loaded"


def check_policies(settings: Settings) -> str:
    """The check `moderator policy validate` makes: every file loads, every tenant compiles."""
    from moderator.cli.preflight import check_policies as checked

    directory = settings.policies.dir
    result = checked(settings)
    tenants = {tenant for tenant, _ in result.policies}
    return f"{directory}: {len(tenants)} tenant(s), {len(result.policies)} compiled policies"


CHECKS: Mapping[str, Check] = {
    "kafka": check_kafka,
    "s3": check_s3,
    "engine": check_engine,
    "policies": check_policies,
}


def _row(result: CheckResult) -> tuple[str, str, str]:
    return (result.check, result.status, result.detail)
