"""Chain-head anchors: snapshots of every chain's head, exported outside the database (a file,
an S3 object or a Kafka topic) so that truncation and wholesale recomputation are detectable.

Each export is also noted in the `anchors` table, for operators; `verify` must be given an
anchor read back from the outside destination, never the database's own copy.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from moderator.audit.db.store import AuditStore
from moderator.audit.errors import AuditError
from moderator.audit.models import Anchor
from moderator.errors import ConfigError
from moderator.settings import AuditSettings

ANCHOR_KEY = b"anchor"
# An anchor is ~150 bytes per chain head: this is room for some 25,000 chains. Anything longer
# read back from a file or S3 is not one of ours, and is not read into memory.
MAX_ANCHOR_BYTES = 4 << 20
# S3 listings are paged (1,000 keys a page); a prefix that needs more pages than this for one
# date folder is not an anchor prefix (or the endpoint keeps answering "truncated").
MAX_LIST_PAGES = 1000


class AnchorSink(Protocol):
    """Where anchors go. `destination` names it in the `anchors` table."""

    @property
    def destination(self) -> str: ...

    def write(self, anchor: Anchor) -> None: ...


def make_anchor(store: AuditStore, now: datetime | None = None) -> Anchor:
    """The current head of every chain."""
    return Anchor(created_at=now or datetime.now(UTC), heads=tuple(store.chain_heads()))


def export_anchor(
    store: AuditStore, sinks: Sequence[AnchorSink], now: datetime | None = None
) -> Anchor:
    """Make an anchor, write it to every sink and note each export in the `anchors` table.
    A sink's failure propagates after the sinks before it were written and noted."""
    anchor = make_anchor(store, now)
    for sink in sinks:
        sink.write(anchor)
        store.record_anchor(anchor, sink.destination)
    return anchor


class MemoryAnchorSink:
    """Keeps anchors in a list (tests, and trying things out)."""

    destination = "memory"

    def __init__(self) -> None:
        self.anchors: list[Anchor] = []

    def write(self, anchor: Anchor) -> None:
        self.anchors.append(anchor)

    def latest(self) -> Anchor | None:
        return self.anchors[-1] if self.anchors else None


class FileAnchorSink:
    """Appends one JSON line per anchor to a file (fsynced); read back with `latest_anchor`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def destination(self) -> str:
        return f"file:{self.path}"

    def write(self, anchor: Anchor) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Created for the owner only (an existing file keeps its mode).
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as out:
            out.write(anchor.to_bytes() + b"\n")
            out.flush()
            os.fsync(out.fileno())

    def latest(self) -> Anchor | None:
        return latest_anchor(self.path)


def latest_anchor(path: Path, *, block: int = 1 << 16) -> Anchor | None:
    """The last complete anchor line of a file (a torn last line is skipped); None when the
    file is missing or holds none."""
    try:
        return read_latest(path, block=block)[0]
    except FileNotFoundError:
        return None


def read_latest(path: Path, *, block: int = 1 << 16) -> tuple[Anchor | None, int]:
    """The last anchor line of a file, and how many lines after it are not anchors (a torn
    last line after a crash, or damage: `audit verify` says so). Reads from the end, so long
    files are cheap; a line longer than MAX_ANCHOR_BYTES is skipped without being held in
    memory. FileNotFoundError when there is no file."""
    skipped = 0
    with path.open("rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        tail = b""
        oversized = False  # the partial line in `tail` is already too long to be an anchor
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            tail = handle.read(end - start) + tail
            end = start
            lines = tail.split(b"\n")
            # lines[0] may be partial unless we reached the start of the file; the last line
            # continues one found too long before
            complete = lines if end == 0 else lines[1:]
            if oversized and complete:
                complete, oversized = complete[:-1], False
                skipped += 1
            for line in reversed(complete):
                anchor = _parse_line(line)
                if anchor is not None:
                    return anchor, skipped
                skipped += bool(line.strip())
            tail = lines[0] if end > 0 else b""
            if len(tail) > MAX_ANCHOR_BYTES:
                tail, oversized = b"", True
    return None, skipped


def _parse_line(line: bytes) -> Anchor | None:
    if not line.strip():
        return None
    try:
        return Anchor.from_bytes(line)
    except ValueError:
        return None


class S3AnchorSink:
    """One object per anchor: `{prefix}/YYYY/MM/DD/YYYYMMDDTHHMMSS.ffffffZ-{hash12}.json`, so
    keys sort by time; `latest` walks the date folders down (a handful of LIST calls), keeping
    only the greatest name of each listing (at most MAX_LIST_PAGES pages), and reads at most
    MAX_ANCHOR_BYTES of the object (else AuditError)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "anchors") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    @property
    def destination(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, anchor: Anchor) -> str:
        at = anchor.created_at.astimezone(UTC)
        digest = hashlib.sha256(anchor.to_bytes()).hexdigest()[:12]
        name = f"{at:%Y/%m/%d}/{at:%Y%m%dT%H%M%S.%fZ}-{digest}.json"
        return f"{self.prefix}/{name}" if self.prefix else name

    def write(self, anchor: Anchor) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.key(anchor),
            Body=anchor.to_bytes(),
            ContentType="application/json",
        )

    def latest(self) -> Anchor | None:
        prefix = f"{self.prefix}/" if self.prefix else ""
        for _level in ("year", "month", "day"):
            folder = self._greatest(prefix, delimiter=True)
            if folder is None:
                return None
            prefix = folder
        key = self._greatest(prefix, delimiter=False)
        if key is None:
            return None
        where = f"s3://{self.bucket}/{key}"
        response = self.client.get_object(Bucket=self.bucket, Key=key)
        body = response["Body"]
        try:
            length = response.get("ContentLength")
            if isinstance(length, int) and length > MAX_ANCHOR_BYTES:
                raise AuditError(
                    f"{where}: {length} bytes, not an anchor (over {MAX_ANCHOR_BYTES})"
                )
            data = body.read(MAX_ANCHOR_BYTES + 1)
        finally:
            body.close()
        if len(data) > MAX_ANCHOR_BYTES:
            raise AuditError(f"{where}: longer than {MAX_ANCHOR_BYTES} bytes, not an anchor")
        return Anchor.from_bytes(data)

    def _greatest(self, prefix: str, *, delimiter: bool) -> str | None:
        """The greatest sub-folder (with `delimiter`) or key under `prefix`; None if none."""
        greatest: str | None = None
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(**kwargs)
        for count, page in enumerate(pages, start=1):
            if count > MAX_LIST_PAGES:
                raise AuditError(
                    f"s3://{self.bucket}/{prefix}: more than {MAX_LIST_PAGES} pages of objects; "
                    "is audit.anchor_s3_uri a prefix of its own?"
                )
            if delimiter:
                names = [p.get("Prefix") for p in page.get("CommonPrefixes", [])]
            else:
                names = [o.get("Key") for o in page.get("Contents", [])]
            for name in names:
                if isinstance(name, str) and (greatest is None or name > greatest):
                    greatest = name
        return greatest


class KafkaAnchorSink:
    """Produces each anchor to a topic, key `anchor`, value the anchor JSON. `producer` is a
    confluent_kafka.Producer (or anything with produce/flush); delivery is awaited."""

    def __init__(self, producer: Any, topic: str, *, timeout_s: float = 30.0) -> None:
        self.producer = producer
        self.topic = topic
        self.timeout_s = timeout_s

    @property
    def destination(self) -> str:
        return f"kafka:{self.topic}"

    def write(self, anchor: Anchor) -> None:
        errors: list[Any] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        self.producer.produce(
            self.topic, key=ANCHOR_KEY, value=anchor.to_bytes(), on_delivery=delivered
        )
        remaining = self.producer.flush(self.timeout_s)
        if remaining or errors:
            raise AuditError(
                f"anchor not delivered to {self.topic}: {errors[0] if errors else 'timeout'}"
            )


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/prefix` → (bucket, prefix)."""
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise ConfigError(f"audit.anchor_s3_uri: expected s3://bucket/prefix, got {uri!r}")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def sinks_from_settings(
    audit: AuditSettings, *, s3_client: Any = None, producer: Any = None
) -> list[AnchorSink]:
    """The sinks the settings name (file, S3, topic). The caller builds the boto3 client and
    the Kafka producer (so this module imports neither)."""
    sinks: list[AnchorSink] = []
    if audit.anchor_file is not None:
        sinks.append(FileAnchorSink(audit.anchor_file))
    if audit.anchor_s3_uri is not None:
        if s3_client is None:
            raise ConfigError("audit.anchor_s3_uri is set but no S3 client was given")
        bucket, prefix = parse_s3_uri(audit.anchor_s3_uri)
        sinks.append(S3AnchorSink(s3_client, bucket, prefix))
    if audit.anchor_topic is not None:
        if producer is None:
            raise ConfigError("audit.anchor_topic is set but no Kafka producer was given")
        sinks.append(KafkaAnchorSink(producer, audit.anchor_topic))
    return sinks
