"""A Kafka broker and moto's S3 server for local work; the mock broker runs inside this process.

The mock cluster lives inside one librdkafka client instance: it is served by that client's
threads and disappears when the client is closed. Other processes can connect to it over TCP
for as long as it lives. It auto-creates topics with 4 partitions (librdkafka has no setting
for that number), does not answer CreateTopics, and cannot do exactly-once
(docs/architecture.md), so `env()` selects `at_least_once` delivery. With kafka="apache" a
real Apache Kafka node (a JVM: moderator.dev.kafka.cluster) takes its place and `env()`
selects `exactly_once`.

`topics` are created at start, so a consumer that subscribes before anything was produced
finds them: on the mock by a producer's metadata request naming each topic (the mock creates
a topic a producer asks about, with 4 partitions, whatever the spec says); on Apache Kafka by
CreateTopics with each spec's partitions, replication factor and configs.

moto keeps its backends per process: two stacks started in one process share their S3 state.

Ports are free ones picked by the system unless `s3_port` (the S3 server) or `kafka_port` (the
Apache Kafka node's client listener) names one. The mock broker's port cannot be chosen: it
binds a port the system picks, and librdkafka has no setting for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, cast

import boto3
from botocore.exceptions import ClientError
from confluent_kafka import KafkaException, Producer

from moderator.dev.errors import DevStackError as DevStackError  # re-exported
from moderator.dev.ports import LOOPBACK, MOCK_PORT_REASON
from moderator.errors import ConfigError
from moderator.listen import bind_reason

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.literals import BucketLocationConstraintType

    from moderator.dev.kafka.cluster import ApacheKafka
    from moderator.dev.s3server import S3Server
    from moderator.ingest.topics import TopicSpec

KafkaKind = Literal["mock", "apache"]
KAFKA_KINDS: tuple[KafkaKind, ...] = ("mock", "apache")
ACCESS_KEY_ID = "testing"
# moto accepts any credentials; these only satisfy boto3's request signer.
SECRET_ACCESS_KEY = "testing"  # noqa: S105 - a fixed dummy, never a real secret
MOCK_SESSION_TIMEOUT_MS = 6_000
"""The consumer group session timeout exported for the mock broker. After a group's last member
leaves, the mock holds the group rebalancing for the session timeout less a second before a
new member is assigned anything: with the default 45 s, every restart of `run` waited 44 s."""
_POLL_INTERVAL_S = 0.2
_METADATA_TIMEOUT_S = 5.0
_TOPICS_TIMEOUT_S = 30.0


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
        topics: Sequence[TopicSpec] = (),
        kafka_port: int = 0,
        s3_port: int = 0,
    ) -> None:
        if brokers < 1:
            raise ValueError("brokers must be at least 1")
        if kafka not in KAFKA_KINDS:
            raise ValueError(f"kafka must be one of {', '.join(KAFKA_KINDS)}")
        if kafka_port and (kafka == "mock" or brokers > 1):
            raise ConfigError(
                f"kafka port {kafka_port}: "
                + (MOCK_PORT_REASON if kafka == "mock" else "only one broker's port can be set")
            )
        self._kafka_port = kafka_port
        self._s3_port = s3_port
        self._kafka_kind: KafkaKind = kafka
        self._apache: ApacheKafka | None = None
        self._buckets = tuple(buckets)
        self._topic_specs = tuple(topics)
        self._topics: dict[str, int] = {}
        self._region = region
        self._brokers = brokers
        self._lock = threading.Lock()
        self._holder: Producer | None = None
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        self._server: S3Server | None = None  # moto is imported only in start()
        self._bootstrap: str | None = None
        self._endpoint: str | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> EmbeddedStack:
        """Start both servers and create the buckets and topics; a second call does nothing.

        ConfigError when a chosen port cannot be listened on; with kafka="apache", also when
        Java or the broker's jars are unavailable. DevStackError when a server does not start
        or a topic cannot be created."""
        with self._lock:
            if self._bootstrap is not None:
                return self
            try:
                self._start_kafka()
                self._create_topics()
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
    def topics(self) -> dict[str, int]:
        """The topics created at start, in the order given: name -> partitions on the cluster."""
        return dict(self._topics)

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
            **(
                {}
                if self._kafka_kind == "apache"
                else {"MODERATOR_KAFKA__SESSION_TIMEOUT_MS": str(MOCK_SESSION_TIMEOUT_MS)}
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

            self._apache = ApacheKafka(self._brokers, client_port=self._kafka_port)
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

    def _create_topics(self) -> None:
        if not self._topic_specs:
            return
        if self._holder is not None:
            self._topics = _mock_topics(self._holder, [s.name for s in self._topic_specs])
        else:
            self._topics = _apache_topics(self.bootstrap_servers, self._topic_specs)

    def _poll_loop(self, holder: Producer) -> None:
        while not self._stopping.is_set():
            holder.poll(_POLL_INTERVAL_S)

    def _start_s3(self) -> None:
        try:
            import moto.server  # noqa: F401 - the devstack extra is installed
        except ImportError as exc:
            raise DevStackError(
                "the S3 server needs the devstack extra: pip install 'moderator[devstack]'"
            ) from exc
        from moderator.dev.s3server import S3Server

        _quiet_werkzeug()
        try:
            self._server = S3Server(self._s3_port).start()
        except OSError as exc:
            raise ConfigError(
                f"S3 server: cannot listen on {LOOPBACK}:{self._s3_port}: {bind_reason(exc)}"
            ) from exc
        self._endpoint = self._server.endpoint_url
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
        self._topics = {}


def _mock_topics(holder: Producer, names: Sequence[str]) -> dict[str, int]:
    """Make the mock create `names`: a producer's metadata request for a topic the mock does
    not know creates it. Returns name -> partitions once the metadata shows every topic."""
    found: dict[str, int] = {}
    deadline = time.monotonic() + _TOPICS_TIMEOUT_S
    for name in names:
        while True:
            try:
                topic = holder.list_topics(name, timeout=_METADATA_TIMEOUT_S).topics.get(name)
            except KafkaException as exc:
                raise DevStackError(f"mock Kafka cluster did not answer: {exc}") from exc
            if topic is not None and topic.error is None and topic.partitions:
                found[name] = len(topic.partitions)
                break
            if time.monotonic() > deadline:
                reason = topic.error if topic is not None else "not in the metadata"
                raise DevStackError(f"mock Kafka cluster did not create topic {name}: {reason}")
            time.sleep(_POLL_INTERVAL_S)
    return found


def _apache_topics(bootstrap: str, specs: Sequence[TopicSpec]) -> dict[str, int]:
    """CreateTopics for `specs` (the service's topic administration); name -> partitions."""
    from confluent_kafka.admin import AdminClient

    from moderator.ingest.topic_admin import TopicAdminError, ensure_topics

    quiet = logging.getLogger("moderator.dev.kafka.admin")
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": quiet}
    admin = AdminClient(conf)
    try:
        outcomes = ensure_topics(admin, list(specs), timeout_s=_TOPICS_TIMEOUT_S)
    except TopicAdminError as exc:
        raise DevStackError(str(exc)) from exc
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        reasons = "; ".join(f"{o.spec.name}: {o.details[0]}" for o in failed)
        raise DevStackError(f"Kafka refused to create topics: {reasons}")
    return {o.spec.name: o.spec.partitions for o in outcomes}


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", exc))


def _quiet_werkzeug() -> None:
    """Keep the S3 server from logging every request, unless logging was set up for it."""
    logger = logging.getLogger("werkzeug")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
