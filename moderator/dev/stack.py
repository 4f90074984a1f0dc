"""A Kafka broker and moto's S3 server for local work; the mock broker runs inside this process.

The mock cluster lives inside one librdkafka client instance: it is served by that client's
threads and disappears when the client is closed. Other processes can connect to it over TCP
for as long as it lives. It auto-creates topics with 4 partitions (librdkafka has no setting
for that number), does not answer CreateTopics, and cannot do exactly-once
(docs/architecture.md), so `env()` selects `at_least_once` delivery. With kafka="apache" a
real Apache Kafka node (a JVM: moderator.dev.kafka.cluster) takes its place and `env()`
selects `exactly_once`.

moto keeps its backends per process: two stacks started in one process share their S3 state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Literal, cast

import boto3
from botocore.exceptions import ClientError
from confluent_kafka import KafkaException, Producer

from moderator.dev.errors import DevStackError as DevStackError  # re-exported

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.literals import BucketLocationConstraintType

    from moderator.dev.kafka.cluster import ApacheKafka

KafkaKind = Literal["mock", "apache"]
KAFKA_KINDS: tuple[KafkaKind, ...] = ("mock", "apache")
ACCESS_KEY_ID = "testing"
# moto accepts any credentials; these only satisfy boto3's request signer.
SECRET_ACCESS_KEY = "testing"  # noqa: S105 - a fixed dummy, never a real secret
_POLL_INTERVAL_S = 0.2
_METADATA_TIMEOUT_S = 5.0


class EmbeddedStack:
    """A Kafka cluster (librdkafka's mock, or Apache Kafka with kafka="apache") + moto S3
    server, living as long as this object."""

    def __init__(
        self,
        *,
        buckets: Sequence[str] = ("uploads",),
        region: str = "us-east-1",
        brokers: int = 1,
        kafka: KafkaKind = "mock",
    ) -> None:
        if brokers < 1:
            raise ValueError("brokers must be at least 1")
        if kafka not in KAFKA_KINDS:
            raise ValueError(f"kafka must be one of {', '.join(KAFKA_KINDS)}")
        self._kafka_kind: KafkaKind = kafka
        self._apache: ApacheKafka | None = None
        self._buckets = tuple(buckets)
        self._region = region
        self._brokers = brokers
        self._lock = threading.Lock()
        self._holder: Producer | None = None
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        self._server: ThreadedMotoServer | None = None  # moto is imported only in start()
        self._bootstrap: str | None = None
        self._endpoint: str | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> EmbeddedStack:
        """Start both servers and create the buckets; a second call does nothing.

        With kafka="apache": ConfigError when Java or the broker's jars are unavailable."""
        with self._lock:
            if self._bootstrap is not None:
                return self
            try:
                self._start_kafka()
                self._start_s3()
            except BaseException:
                self._stop_locked()
                raise
        return self

    def stop(self) -> None:
        """Stop both servers. Safe to call more than once, or on a stack never started."""
        with self._lock:
            self._stop_locked()

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what clients need ------------------------------------------------------------------

    @property
    def kafka(self) -> KafkaKind:
        """Which broker serves Kafka: "mock" or "apache"."""
        return self._kafka_kind

    @property
    def bootstrap_servers(self) -> str:
        """Comma-separated host:port list of the brokers."""
        if self._bootstrap is None:
            raise DevStackError("the embedded stack is not started")
        return self._bootstrap

    @property
    def s3_endpoint_url(self) -> str:
        """The S3 server's endpoint, http://127.0.0.1:PORT."""
        if self._endpoint is None:
            raise DevStackError("the embedded stack is not started")
        return self._endpoint

    @property
    def buckets(self) -> tuple[str, ...]:
        return self._buckets

    @property
    def region(self) -> str:
        return self._region

    def env(self) -> dict[str, str]:
        """The environment a `moderator` process needs to use this stack, in a fixed order."""
        return {
            "MODERATOR_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap_servers,
            # The mock cannot do transactions; the real broker is where exactly-once is proven.
            "MODERATOR_KAFKA__DELIVERY": (
                "exactly_once" if self._kafka_kind == "apache" else "at_least_once"
            ),
            "MODERATOR_S3__ENDPOINT_URL": self.s3_endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": self._region,
        }

    def s3_client(self) -> S3Client:
        """A boto3 S3 client for the server; credentials are passed, not read from the env."""
        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint_url,
            region_name=self._region,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    # -- internals --------------------------------------------------------------------------

    def _start_kafka(self) -> None:
        if self._kafka_kind == "apache":
            from moderator.dev.kafka.cluster import ApacheKafka

            self._apache = ApacheKafka(self._brokers)
            self._bootstrap = self._apache.start().bootstrap_servers
            return
        # bootstrap.servers is ignored once test.mock.num.brokers is set; librdkafka's log
        # lines are routed to Python logging and served by the poller thread.
        holder = Producer(
            {
                "test.mock.num.brokers": self._brokers,
                "client.id": "moderator-devstack",
                "logger": logging.getLogger("moderator.dev.kafka"),
            }
        )
        self._holder = holder
        self._stopping.clear()
        self._poller = threading.Thread(
            target=self._poll_loop, args=(holder,), name="devstack-kafka-poll", daemon=True
        )
        self._poller.start()
        try:
            metadata = holder.list_topics(timeout=_METADATA_TIMEOUT_S)
        except KafkaException as exc:
            raise DevStackError(f"mock Kafka cluster did not answer: {exc}") from exc
        brokers = sorted(metadata.brokers.values(), key=lambda b: b.id)
        if not brokers:
            raise DevStackError("mock Kafka cluster reported no brokers")
        self._bootstrap = ",".join(f"{b.host}:{b.port}" for b in brokers)

    def _poll_loop(self, holder: Producer) -> None:
        while not self._stopping.is_set():
            holder.poll(_POLL_INTERVAL_S)

    def _start_s3(self) -> None:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise DevStackError(
                "the S3 server needs the devstack extra: pip install 'moderator[devstack]'"
            ) from exc
        _quiet_werkzeug()
        # Port 0: the OS picks a free port, read back from the bound socket (no race).
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        self._server = server
        host, port = server.get_host_and_port()
        self._endpoint = f"http://{host}:{port}"
        client = self.s3_client()
        try:
            for bucket in self._buckets:
                self._create_bucket(client, bucket)
        finally:
            client.close()

    def _create_bucket(self, client: S3Client, bucket: str) -> None:
        try:
            if self._region == "us-east-1":
                client.create_bucket(Bucket=bucket)
            else:
                client.create_bucket(
                    Bucket=bucket,
                    CreateBucketConfiguration={
                        "LocationConstraint": cast("BucketLocationConstraintType", self._region)
                    },
                )
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass  # another stack in this process made it: moto's state is per process
        except ClientError as exc:
            raise DevStackError(f"cannot create bucket {bucket!r}: {_error_code(exc)}") from exc
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

    def _stop_locked(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._apache is not None:
            self._apache.stop()
            self._apache = None
        self._stopping.set()
        if self._poller is not None:
            self._poller.join()
            self._poller = None
        if self._holder is not None:
            self._holder.close()
            self._holder = None
        self._bootstrap = None
        self._endpoint = None


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", exc))


def _quiet_werkzeug() -> None:
    """Keep the S3 server from logging every request, unless logging was set up for it."""
    logger = logging.getLogger("werkzeug")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
