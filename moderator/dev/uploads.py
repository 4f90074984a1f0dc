"""Send an upload to a running stack and read verdicts back: `moderator dev-stack upload` and
`moderator dev-stack verdicts`.

Both take the stack's address from the settings (the environment `moderator dev-stack` exports),
so they work against any Kafka and S3 the settings name.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from pydantic import ValidationError

from moderator.dev.shapes import NATIVE_SHAPES, sequencer, shaped_value
from moderator.errors import ConfigError, ModeratorError
from moderator.events.parse import MalformedMessage, parse_message
from moderator.events.s3notify import TenantRule
from moderator.events.upload import UploadEvent, tenant_id_problem
from moderator.fetch.s3 import build_s3_client
from moderator.ingest.kafka import build_client
from moderator.settings import Settings

# librdkafka's retries against a stack that is down would fill the terminal; the outcome is
# reported in one line instead.
_QUIET = logging.getLogger("moderator.dev.client")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False
_POLL_S = 0.2
# The `dev-stack upload` flag behind each field of the event it builds.
_FLAGS = {
    "tenant_id": "--tenant",
    "object.bucket": "--bucket",
    "object.key": "--key",
    "object.content_type": "--content-type",
    "context.surface": "--surface",
}


@dataclass(frozen=True)
class Sent:
    """An upload put into the bucket and announced on the uploads topic."""

    event: UploadEvent  # as the service reads the message: the event id to wait for
    topic: str
    size: int
    shape: str = "native"


def upload_data(file: Path | None) -> tuple[bytes, str, str | None]:
    """FILE's bytes, name and content type guessed from the name; without FILE a generated
    sample JPEG. ConfigError when FILE cannot be read."""
    if file is None:
        from moderator.dev.samples import make_sample

        sample = make_sample("jpeg", seed=random.randrange(10_000))
        return sample.data, sample.name, sample.content_type
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"dev-stack upload: cannot read {file}: {exc.strerror}") from exc
    return data, file.name, mimetypes.guess_type(file.name)[0]


def new_event_id() -> str:
    """A fresh event id: `dev-` and 32 hex digits."""
    return f"dev-{uuid.uuid4().hex}"


def upload_event(
    *,
    tenant: str,
    bucket: str,
    key: str,
    size: int,
    content_type: str | None,
    version_id: str | None,
    surface: str | None,
    event_id: str | None = None,
) -> UploadEvent:
    """An UploadEvent v1 for an object just written; ConfigError naming the flag (`--tenant`)
    behind the bad field, or the field when no flag sets it."""
    problem = tenant_id_problem(tenant)
    if problem is not None:
        raise ConfigError(f"--tenant: {problem}")
    try:
        return UploadEvent.model_validate(
            {
                "event_id": event_id or new_event_id(),
                "tenant_id": tenant,
                "object": {
                    "bucket": bucket,
                    "key": key,
                    "version_id": version_id,
                    "size": size,
                    "content_type": content_type,
                },
                "uploaded_at": datetime.now(UTC),
                "context": {"surface": surface},
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if where in _FLAGS:
            raise ConfigError(f"{_FLAGS[where]}: {first['input']!r}: {first['msg']}") from exc
        raise ConfigError(f"upload event: {where}: {first['msg']}") from exc


def send_upload(
    settings: Settings,
    data: bytes,
    *,
    tenant: str,
    bucket: str,
    key: str,
    content_type: str | None,
    surface: str | None,
    shape: str = "native",
) -> Sent:
    """Put `data` at s3://bucket/key, then announce it on kafka.topics.uploads in `shape`
    (`moderator.dev.shapes`; the message key is the verdict key, `{tenant}:{bucket}/{key}`).
    ConfigError, before anything is written, when the event cannot be built or the service
    would not read it as `tenant`'s upload; ModeratorError, one line, when S3 or Kafka fails or
    cannot be reached within kafka.startup_timeout_s."""
    draft = upload_event(
        tenant=tenant,
        bucket=bucket,
        key=key,
        size=len(data),
        content_type=content_type,
        version_id=None,
        surface=surface,
    )
    if shape != "native":
        if surface is not None and shape not in NATIVE_SHAPES:
            raise ConfigError(
                f"--surface: --shape {shape} carries no surface (native and sns-native do); "
                "the service judges its event under the surface 'default'"
            )
        native = draft.model_dump(mode="json")
        _as_read(settings, shape, shaped_value(shape, native, etag="0" * 32, seq="0"), tenant)
    s3 = build_s3_client(settings.s3)
    try:
        extra = {"ContentType": content_type} if content_type else {}
        put = s3.put_object(Bucket=bucket, Key=key, Body=data, **extra)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise ModeratorError(f"s3: cannot put s3://{bucket}/{key}: {code}") from exc
    except BotoCoreError as exc:
        raise ModeratorError(f"s3: cannot put s3://{bucket}/{key}: {exc}") from exc
    finally:
        s3.close()
    event = upload_event(
        tenant=tenant,
        bucket=bucket,
        key=key,
        size=len(data),
        content_type=content_type,
        version_id=put.get("VersionId"),
        surface=surface,
    )
    if shape == "native":
        value = event.model_dump_json().encode()
    else:
        etag = str(put.get("ETag") or "").strip('"') or None
        value = shaped_value(shape, event.model_dump(mode="json"), etag=etag, seq=sequencer())
        event = _as_read(settings, shape, value, tenant)
    topic = settings.kafka.topics.uploads
    _produce(settings, topic, event.output_key.encode(), value)
    return Sent(event=event, topic=topic, size=len(data), shape=shape)


def tenant_rule(settings: Settings) -> TenantRule:
    """The tenancy rule the service reads store events with (settings.tenancy)."""
    tenancy = settings.tenancy
    return TenantRule(tenancy.rule, dict(tenancy.bucket_map), frozenset(tenancy.content_events))


def _as_read(settings: Settings, shape: str, value: bytes, tenant: str) -> UploadEvent:
    """The UploadEvent the service reads from `value`; ConfigError when it would read none, or
    one of another tenant than `tenant`."""
    rule = tenant_rule(settings)
    try:
        events = parse_message(value, rule).events
    except MalformedMessage as exc:
        raise ConfigError(
            f"--shape {shape}: the service would send the message to the DLQ as "
            f"malformed_event: {exc}"
        ) from exc
    if not events:
        raise ConfigError(
            f"--shape {shape}: the service would skip the message: Put is not in "
            "tenancy.content_events"
        )
    event = events[0]
    if event.tenant_id != tenant:
        where = f"s3://{event.object.bucket}/{event.object.key}"
        raise ConfigError(
            f"--shape {shape}: the service reads the tenant {event.tenant_id!r} from {where} "
            f"(tenancy.rule {rule.kind}), not --tenant {tenant!r}"
        )
    return event


def _produce(settings: Settings, topic: str, key: bytes, value: bytes) -> None:
    conf = {**settings.kafka.client_config(), "client.id": "moderator-dev-upload"}
    producer = build_client(Producer, {**conf, "logger": _QUIET}, settings.kafka)
    failures: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(str(err.str()))

    timeout_s = settings.kafka.startup_timeout_s
    producer.produce(topic, key=key, value=value, on_delivery=delivered)
    if producer.flush(timeout_s) > 0:
        raise ModeratorError(
            f"kafka: the upload event was not delivered to {topic} within {timeout_s:g} s "
            f"(kafka.startup_timeout_s); is the stack at {settings.kafka.bootstrap_servers} "
            "running?"
        )
    if failures:
        raise ModeratorError(f"kafka: the upload event was refused by {topic}: {failures[0]}")


def read_verdicts(
    settings: Settings, event_ids: Sequence[str], *, timeout_s: float
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read kafka.topics.verdicts from the beginning (read_committed).

    With `event_ids`: until each has a verdict or `timeout_s` passes; returns their first
    verdicts in the order asked, and the ids still missing. Without: every verdict on the topic
    now, in the order read, and no missing ids. ModeratorError when the topic does not appear
    within `timeout_s`."""
    topic = settings.kafka.topics.verdicts
    conf = {
        **settings.kafka.client_config(),
        "client.id": "moderator-dev-verdicts",
        "group.id": f"moderator-dev-verdicts-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        # Without event ids, reading stops once every partition reported its end.
        "enable.partition.eof": True,
        "logger": _QUIET,
    }
    consumer = build_client(Consumer, conf, settings.kafka)
    deadline = time.monotonic() + timeout_s
    try:
        partitions = _partitions(consumer, topic, deadline)
        not_at_end = set(partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        wanted = set(event_ids)
        found: dict[str, dict[str, Any]] = {}
        read: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            if event_ids and wanted <= found.keys():
                break
            if not event_ids and not not_at_end:
                break
            for msg in consumer.consume(100, _POLL_S):
                error, value = msg.error(), msg.value()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    not_at_end.discard(msg.partition())
                if error is not None or not value:
                    continue
                try:
                    doc = json.loads(value)
                except ValueError:
                    continue  # not a verdict: nothing to show
                if not isinstance(doc, dict):
                    continue
                read.append(doc)
                event_id = doc.get("event_id")
                if event_id in wanted and event_id not in found:
                    found[event_id] = doc
    finally:
        consumer.close()
    if not event_ids:
        return read, []
    return [found[i] for i in event_ids if i in found], [i for i in event_ids if i not in found]


def _partitions(consumer: Any, topic: str, deadline: float) -> list[int]:
    while True:
        try:
            meta = consumer.list_topics(topic, timeout=max(deadline - time.monotonic(), 0.1))
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            reason = error.str() if isinstance(error, KafkaError) else str(exc)
            raise ModeratorError(f"kafka: cannot read the metadata of {topic}: {reason}") from exc
        found = meta.topics.get(topic)
        if found is not None and found.error is None and found.partitions:
            return sorted(found.partitions)
        if time.monotonic() > deadline:
            raise ModeratorError(f"kafka: topic {topic} does not exist")
        time.sleep(_POLL_S)
