"""One frozen settings object: defaults < YAML file < MODERATOR_* environment < CLI flags."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from moderator.errors import ConfigError
from moderator.events.upload import TENANT_ID_RULE, tenant_id_problem
from moderator.masking import has_userinfo, mask_passwords
from moderator.policy.keys import bucket_name_problem
from moderator.settings_errors import ENV_PREFIX as ENV_PREFIX  # re-exported: callers read it here
from moderator.settings_errors import (
    Sources,
    TwoKeyError,
    env_problem,
    scalar_section,
    section_problem,
    validation_line,
)
from moderator.yaml_keys import DuplicateKey, load_unique, yaml_problem

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
ALL_TENANTS = "*"  # an audit.api_tokens entry: every tenant (moderator.audit.read.api_auth)
MiB = 1 << 20


class _Section(BaseModel):
    # hide_input_in_errors: a rejected value may be a secret (a raw token, a key in the wrong
    # shape); errors name the key and the problem, never the value.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class TopicSettings(_Section):
    uploads: str = "uploads"
    verdicts: str = "moderation.verdicts"
    audit: str = "moderation.audit"
    dlq: str = "moderation.dlq"
    replay: str = "moderation.replay"


class TopicSpecSettings(_Section):
    """How `moderator topics create` makes one topic (docs/operations.md, "Topics")."""

    partitions: int = Field(default=12, ge=1, le=100_000)
    replication_factor: int = Field(default=3, ge=1, le=32)
    configs: dict[str, str | int | bool | None] = Field(
        default_factory=dict,
        description="topic configs merged over the built-in defaults; null drops a default",
    )


class TopicSpecsSettings(_Section):
    uploads: TopicSpecSettings = TopicSpecSettings()
    verdicts: TopicSpecSettings = TopicSpecSettings()
    audit: TopicSpecSettings = TopicSpecSettings()
    dlq: TopicSpecSettings = TopicSpecSettings(partitions=3)
    replay: TopicSpecSettings = TopicSpecSettings()


class KafkaSettings(_Section):
    bootstrap_servers: str = "localhost:9092"
    delivery: Literal["exactly_once", "at_least_once"] = "exactly_once"
    group_id: str = "moderator"
    topics: TopicSettings = TopicSettings()
    topic_specs: TopicSpecsSettings = TopicSpecsSettings()
    create_topics: bool = Field(
        default=False, description="`moderator run` creates missing topics at start-up"
    )
    startup_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="how long topic administration waits for Kafka"
    )
    transactional_id: str | None = Field(
        default=None, description="default: moderator-{group_id}-{instance_id} (stable per pod)"
    )
    commit_interval_ms: int = Field(default=1000, ge=10)
    commit_max_events: int = Field(default=1000, ge=1)
    transaction_timeout_ms: int = Field(default=60_000, ge=1000)
    session_timeout_ms: int = Field(default=45_000, ge=1000)
    static_membership: bool = Field(
        default=False,
        description="join the group as a static member (group.instance.id "
        "moderator-{group_id}-{instance_id}): a restarted pod gets its partitions back at once",
    )
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    queued_max_messages_kbytes: int = Field(
        default=8192, ge=1, description="librdkafka prefetch per consumer; part of the memory bound"
    )
    # Production cluster pass-through.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = None
    # The mechanisms librdkafka knows (its sasl.mechanisms property, spelled exactly).
    sasl_mechanism: (
        Literal["GSSAPI", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None
    ) = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    client: dict[str, str | int | bool] = Field(
        default_factory=dict, description="extra librdkafka properties, passed through verbatim"
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _broker_list(cls, servers: str) -> str:
        problem = broker_list_problem(servers)
        if problem is not None:
            raise ValueError(problem)
        return servers

    @field_validator("client")
    @classmethod
    def _not_set_by_the_service(
        cls, client: dict[str, str | int | bool]
    ) -> dict[str, str | int | bool]:
        for key in client:
            name = key.strip().lower()
            why = SERVICE_CLIENT_KEYS.get(name)
            if why is not None:
                raise ValueError(f"{key}: set by the service ({why}); remove it")
            setting = DEDICATED_CLIENT_KEYS.get(name)
            if setting is not None:
                raise ValueError(
                    f"{key}: use kafka.{setting} (checked at start-up, and kept secret where it "
                    "is one); remove it here"
                )
        return client

    @model_validator(mode="after")
    def _broker_protocols(self) -> KafkaSettings:
        protocol = self.security_protocol or "PLAINTEXT"
        problem = broker_list_problem(self.bootstrap_servers, str(protocol))
        if problem is not None:
            raise ValueError(f"bootstrap_servers: {problem}")
        return self

    def client_config(self) -> dict[str, Any]:
        """The librdkafka properties shared by every client."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        pairs = {
            "security.protocol": self.security_protocol,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": (
                self.ssl_key_password.get_secret_value() if self.ssl_key_password else None
            ),
        }
        conf.update({k: v for k, v in pairs.items() if v is not None})
        conf.update(self.client)
        return conf


# The librdkafka properties moderator/ingest/kafka.py always sets on the service's consumers
# (the audit sink's too) and producers, over kafka.client: set there, they would be ignored.
# linger.ms, compression.type and client.id are not here: the audit anchor producer keeps them.
SERVICE_CLIENT_KEYS = {
    "group.id": "from kafka.group_id; the audit sink's from audit.sink_group_id",
    "enable.auto.commit": "false: offsets are committed with the verdicts they produced",
    "enable.auto.offset.store": "false: offsets are stored with the verdicts they produced",
    "isolation.level": "read_committed: records of aborted transactions are never read",
    "partition.assignment.strategy": "cooperative-sticky",
    "auto.offset.reset": "earliest: a new consumer group starts at the oldest record",
    "queued.max.messages.kbytes": "from kafka.queued_max_messages_kbytes",
    "session.timeout.ms": "from kafka.session_timeout_ms",
    "group.instance.id": "from kafka.static_membership: moderator-{group_id}-{instance_id}",
    "max.poll.interval.ms": "from kafka.max_poll_interval_ms",
    "enable.idempotence": "true: a retried send never writes a record twice",
    "acks": "all: a record is written once every in-sync replica has it",
    "request.required.acks": "all (acks): a record is written once every in-sync replica has it",
    "transactional.id": "from kafka.transactional_id, by default "
    "moderator-{group_id}-{instance_id}",
    "transaction.timeout.ms": "from kafka.transaction_timeout_ms",
}


# librdkafka properties that have a setting of their own: in kafka.client they would bypass its
# checks (a broker list, a secret kept as one) and override it silently.
DEDICATED_CLIENT_KEYS = {
    "bootstrap.servers": "bootstrap_servers",
    "metadata.broker.list": "bootstrap_servers",
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_username",
    "sasl.password": "sasl_password",
    "ssl.ca.location": "ssl_ca_location",
    "ssl.certificate.location": "ssl_certificate_location",
    "ssl.key.location": "ssl_key_location",
    "ssl.key.password": "ssl_key_password",
}


# librdkafka's bootstrap.servers: a comma-separated list of `[PROTOCOL://]host[:port]`, the host
# a name or an address (IPv6 in brackets), the port 9092 when left out. A protocol must be the
# client's security.protocol, or librdkafka drops the entry.
_BROKER_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


def broker_list_problem(servers: str, security_protocol: str | None = None) -> str | None:
    """Why librdkafka would find no broker in `servers`, or one nobody meant; None when fine.

    Refused: an empty list, an empty entry (`a:9092,`: often a variable that was not set), an
    entry with a space in it, an unknown protocol or (given `security_protocol`) another one, a
    port that is not 1..65535 (librdkafka would read it as 0).
    """
    if not servers.strip():
        return "empty: name at least one broker, e.g. kafka:9092"
    for entry in (part.strip() for part in servers.split(",")):
        if not entry:
            return f"an empty entry in {servers.strip()[:200]!r} (a stray comma?)"
        shown = repr(entry[:100])
        if any(c.isspace() for c in entry):
            return f"{shown}: brokers are separated by commas, not spaces"
        address = entry
        if "://" in entry:
            protocol, _, address = entry.partition("://")
            address = address.split("/", 1)[0]  # librdkafka ignores a URL's path
            if protocol.upper() not in _BROKER_PROTOCOLS:
                return f"{shown}: the protocol must be one of {', '.join(_BROKER_PROTOCOLS)}"
            if security_protocol is not None and protocol.upper() != security_protocol.upper():
                return (
                    f"{shown} names protocol {protocol.upper()} but security_protocol is "
                    f"{security_protocol.upper()} (librdkafka would skip the broker)"
                )
        host, colon, port = address.rpartition(":")
        if not colon or "]" in port or host.endswith(":"):  # no port (an IPv6 address alone)
            continue
        if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            return f"{shown}: the port must be a number 1..65535 (host:port)"
    return None


class S3Settings(_Section):
    endpoint_url: str | None = Field(default=None, description="unset = AWS")
    region: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    ca_bundle: str | None = None
    verify_tls: bool = True
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=20.0, gt=0)
    max_attempts: int = Field(default=4, ge=1, le=20)
    max_pool_connections: int = Field(default=32, ge=1)
    outage_wait_s: float = Field(
        default=300.0, ge=0, description="how long a read waits for a store serving no read"
    )

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, url: str | None) -> str | None:
        if url is None:
            return None
        if has_userinfo(url):
            raise ValueError(
                f"must not hold credentials: {mask_passwords(url)!r} (they come from the AWS "
                "chain, e.g. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL such as http://minio:9000, got {url!r}")
        return url


class TenancySettings(_Section):
    rule: Literal["key_prefix", "bucket_map"] = "key_prefix"
    bucket_map: dict[str, str] = Field(default_factory=dict)
    upload_buckets: tuple[str, ...] = Field(
        default=("uploads",), description="buckets a tenant's own prefix may be read from"
    )
    content_events: tuple[str, ...] = Field(
        default=("Put", "Post", "Copy", "CompleteMultipartUpload"),
        min_length=1,
        description="ObjectCreated event names that write content and are judged; others skipped",
    )

    @field_validator("bucket_map")
    @classmethod
    def _bucket_tenants(cls, bucket_map: dict[str, str]) -> dict[str, str]:
        # An invalid name here would send every event of the bucket to the DLQ as having no
        # valid tenant id: refused at start-up instead, naming the entry.
        for bucket, tenant in bucket_map.items():
            problem = bucket_name_problem(bucket)
            if problem is not None:
                raise ValueError(f"key {problem}")
            problem = tenant_id_problem(tenant)
            if problem is not None:
                raise ValueError(f"{bucket}: {problem}")
        return bucket_map

    @field_validator("upload_buckets")
    @classmethod
    def _bucket_names(cls, buckets: tuple[str, ...]) -> tuple[str, ...]:
        for bucket in buckets:
            problem = bucket_name_problem(bucket)
            if problem is not None:
                raise ValueError(problem)
        return buckets

    @field_validator("content_events")
    @classmethod
    def _event_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,63}", name):
                raise ValueError(
                    f"{name[:70]!r} is not an event name such as Put or CompleteMultipartUpload "
                    "(the part after s3:ObjectCreated:)"
                )
        return names

    @model_validator(mode="after")
    def _map_needed(self) -> TenancySettings:
        if self.rule == "bucket_map" and not self.bucket_map:
            raise ValueError("rule: is bucket_map but bucket_map is empty")
        return self


class FetchSettings(_Section):
    concurrency: int = Field(default=16, ge=1, le=512)
    decode_workers: int | None = Field(
        default=None,
        ge=1,
        le=512,
        description="threads that hash, decode and hand fetched objects to the engine, at most "
        "fetch.concurrency; unset: the CPUs the process may run on (set it to the pod's CPU "
        "limit in a container)",
    )
    decode_ahead: int | None = Field(
        default=None,
        ge=1,
        description="events decoded and not yet answered by the engine, at most; unset: twice "
        "what the engine takes at once (openai: max_in_flight and the quarter more it holds "
        "ready; others: engine.concurrency x engine.batch_size), at least fetch.concurrency",
    )
    max_object_bytes: int = Field(default=30 * MiB, ge=1)
    max_pixels: int = Field(default=64_000_000, ge=1)
    allowed_formats: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
    max_frames: int = Field(
        default=4, ge=1, le=64, description="frames sampled from an animation (strictest wins)"
    )
    decode_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="CPU time one object's decoding may use (checked between frames); "
        "then the verdict is decode_timeout",
    )
    max_decoded_pixels: int = Field(
        default=1_000_000_000,
        ge=1,
        description="pixels one object's decoding may produce, counting every animation frame "
        "decoded on the way to the sampled ones; checked from the header: decode_timeout",
    )
    decode_budget_bytes: int = Field(
        default=1024 * MiB,
        ge=16 * MiB,
        description="memory all decodes in progress may hold at once, estimated from each "
        "image's header before decoding; a single image needing more is a decompression_bomb",
    )

    @model_validator(mode="after")
    def _work_covers_one_frame(self) -> FetchSettings:
        if self.max_decoded_pixels < self.max_pixels:
            raise TwoKeyError(
                "max_decoded_pixels",
                f"{self.max_decoded_pixels} is too small: max_decoded_pixels must be at least "
                f"max_pixels ({self.max_pixels})",
                "max_pixels",
                f"{self.max_pixels} is too large: max_pixels must be at most "
                f"max_decoded_pixels ({self.max_decoded_pixels})",
            )
        return self

    @model_validator(mode="after")
    def _decoders_fed(self) -> FetchSettings:
        workers, fetchers = self.decode_workers, self.concurrency
        if workers is not None and workers > fetchers:
            raise TwoKeyError(
                "decode_workers",
                f"{workers} is above concurrency ({fetchers}): each decodes what a fetch "
                "worker has read, so more would wait",
                "concurrency",
                f"{fetchers} is below decode_workers ({workers})",
            )
        return self


class FakeEngineSettings(_Section):
    latency_ms: float = Field(default=0.0, ge=0)
    failure_rate: float = Field(default=0.0, ge=0, le=1)
    unsafe_rate: float = Field(default=0.1, ge=0, le=1)
    seed: int = 0


class NudenetSettings(_Section):
    threads: int = Field(default=2, ge=1, le=64)
    block_threshold: float = Field(default=0.6, ge=0, le=1)
    explicit_threshold: float = Field(default=0.7, ge=0, le=1)


class GenerationSettings(_Section):
    """Decoding parameters shared by the guard-model engines; recorded in every audit record."""

    max_new_tokens: int = Field(default=512, ge=16, le=8192)
    temperature: float = Field(default=0.0, ge=0, le=2, description="0 = greedy (the default)")
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = Field(default=None, description="sampling seed when temperature > 0")
    structured: bool = Field(
        default=True, description="constrain output to the verdict JSON schema where supported"
    )
    rationale_max_chars: int = Field(default=1200, ge=16, le=20_000)
    score: bool = Field(default=True, description="compute P(Unsafe) from token log-probabilities")

    def record(self) -> dict[str, Any]:
        """The parameters as they go into the audit record."""
        return self.model_dump(mode="json")


class TransformersSettings(_Section):
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: str | None = Field(default=None, description="e.g. sdpa, eager")
    max_image_tiles: int | None = Field(
        default=None,
        ge=1,
        le=36,
        description="LLaVA-OneVision: most anyres grid tiles beside the base tile; throughput knob",
    )
    max_pixels: int | None = Field(
        default=None, ge=3136, description="Qwen2-VL family: cap on pixels per image"
    )
    warmup: bool = Field(default=True, description="one generation at start-up before ready")
    threads: int | None = Field(default=None, ge=1, le=256, description="torch CPU threads")
    revision: str | None = None


class LmdeploySettings(_Section):
    """TurbomindEngineConfig / VisionConfig knobs and the scoring request."""

    max_batch_size: int = Field(default=64, ge=1, le=2048)
    cache_max_entry_count: float = Field(default=0.8, gt=0, le=1)
    session_len: int = Field(default=12_288, ge=1024)
    tp: int = Field(default=1, ge=1, le=64)
    quant_policy: Literal[0, 4, 8] = 0
    vision_batch_size: int = Field(default=8, ge=1, le=1024)
    model_format: Literal["hf", "awq", "gptq"] | None = None
    enable_prefix_caching: bool = Field(
        default=True, description="TurbomindEngineConfig.enable_prefix_caching"
    )
    score_request: bool = Field(
        default=True,
        description="score with one extra one-token request per item at the rating position",
    )
    score_top_logprobs: int = Field(
        default=20, ge=2, le=1024, description="log-probabilities the scoring request returns"
    )


class OpenAISettings(_Section):
    """The `openai` engine's HTTP client (base URL and model come from engine.base_url/model)."""

    api_key: SecretStr | None = Field(default=None, description="sent as a bearer token")
    max_in_flight: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="most requests open at once: the server's batch slots (lmdeploy "
        "--max-batch-size, vLLM --max-num-seqs) over the pods sharing it, with headroom",
    )
    adaptive: bool = Field(
        default=True,
        description="adapt the in-flight limit between 1 and max_in_flight (AIMD): grow while "
        "latency stays flat, shrink on a latency rise or HTTP 429/503/504",
    )
    latency_tolerance: float = Field(
        default=2.5,
        gt=1,
        le=10,
        description="adaptive: shrink once a round's median latency passes this multiple of "
        "the lowest measured (with few requests queued)",
    )
    max_connections: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="HTTP connections in all (pools of at most 8); unset = max_in_flight",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0)
    attempts: int = Field(default=3, ge=1, le=20, description="tries per request (tenacity)")
    response_format: Literal["json_schema", "json_object", "none"] = "json_schema"
    logprobs: bool = Field(default=True, description="ask for log-probabilities (score)")
    top_logprobs: int = Field(default=5, ge=1, le=20)
    image_format: Literal["PNG", "JPEG"] = "PNG"
    max_response_bytes: int | None = Field(
        default=None,
        ge=4096,
        le=1 << 30,
        description="cap on one answer's body; unset = sized from max_new_tokens and "
        "top_logprobs (1 MiB + 512 bytes per token and alternative)",
    )


class EngineSettings(_Section):
    kind: Literal["nudenet", "transformers", "lmdeploy", "openai", "fake"] = "nudenet"
    model: str | None = Field(
        default=None, description="checkpoint directory (transformers, lmdeploy) or served name"
    )
    base_url: str | None = Field(default=None, description="openai engine: e.g. http://h:23333/v1")
    concurrency: int = Field(default=1, ge=1, le=256, description="most engine batches in flight")
    batch_size: int = Field(default=8, ge=1, le=1024)
    max_wait_ms: float = Field(default=20.0, ge=0)
    timeout_s: float = Field(default=60.0, gt=0)
    retries: int = Field(default=1, ge=0, le=10)
    outage_wait_s: float = Field(
        default=300.0,
        ge=0,
        description="openai engine: how long a request waits for a server answering no request",
    )
    fake: FakeEngineSettings = FakeEngineSettings()
    nudenet: NudenetSettings = NudenetSettings()
    generation: GenerationSettings = GenerationSettings()
    transformers: TransformersSettings = TransformersSettings()
    lmdeploy: LmdeploySettings = LmdeploySettings()
    openai: OpenAISettings = OpenAISettings()


class FlowSettings(_Section):
    """Backpressure water marks and shutdown."""

    high_in_flight: int = Field(
        default=2000, ge=1, description="events (or held messages) in flight before pausing"
    )
    low_in_flight: int = Field(default=1000, ge=0)
    high_buffered_bytes: int = Field(default=256 * MiB, ge=1)
    low_buffered_bytes: int = Field(default=128 * MiB, ge=0)
    drain_grace_s: float = Field(default=20.0, ge=0)
    poll_batch: int = Field(default=500, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> FlowSettings:
        """Each low water mark below its high one; worded about both, so that an error names
        whichever of the two the user set."""
        pairs = (
            ("low_in_flight", self.low_in_flight, "high_in_flight", self.high_in_flight),
            (
                "low_buffered_bytes",
                self.low_buffered_bytes,
                "high_buffered_bytes",
                self.high_buffered_bytes,
            ),
        )
        for low, low_value, high, high_value in pairs:
            if low_value >= high_value:
                raise TwoKeyError(
                    low,
                    f"{low_value} must be below {high} ({high_value})",
                    high,
                    f"{high_value} must be above {low} ({low_value})",
                )
        return self


class CacheSettings(_Section):
    max_entries: int = Field(default=100_000, ge=0, description="0 disables the verdict cache")
    scope: Literal["shared", "tenant"] = Field(
        default="shared",
        description="shared: tenants whose model input is the same share answers (one engine "
        "call per image); tenant: each tenant's own (no tenant learns another's uploads)",
    )


class PolicySettings(_Section):
    dir: Path = Path("policies")
    default_for_unknown: bool = False
    poll_interval_s: float = Field(
        default=5.0, ge=0, description="how often policy files are re-read; 0 disables hot reload"
    )


# A cutoff this far back stays a valid date; longer is "forever": leave the tenant out.
MAX_RETENTION_DAYS = 36_500


class AuditSettings(_Section):
    url: str = "sqlite:///moderator-audit.db"
    retention_days: dict[str, int] = Field(
        default_factory=dict,
        description='tenant -> days (0..36500) before records are redacted; "default" for the '
        "others; unset = kept forever",
    )
    anchor_every_s: float = Field(default=60.0, gt=0, description="chain-head anchor period")
    anchor_file: Path | None = Field(default=None, description="append anchors to this file")
    anchor_s3_uri: str | None = Field(default=None, description="s3://bucket/prefix for anchors")
    anchor_topic: str | None = Field(default=None, description="Kafka topic for anchors")
    batch_size: int = Field(default=500, ge=1, le=10_000, description="sink rows per transaction")
    sink_group_id: str | None = Field(
        default=None, description="audit sink consumer group; default {kafka.group_id}-audit-sink"
    )
    api_tokens: dict[str, list[str]] = Field(
        default_factory=dict,
        description="`audit serve` bearer tokens: SHA-256 hex of a token -> tenants it may read "
        '(["*"] = every tenant); make a hash with: printf %s "$TOKEN" | moderator audit hash-token',
    )

    @field_validator("anchor_file", mode="before")
    @classmethod
    def _anchor_file_named(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("empty: name a file, or leave the setting out")
        return value

    @field_validator("url")
    @classmethod
    def _database_url(cls, url: str) -> str:
        # Checked here, not only when the store opens, so a bad URL is reported like every
        # other setting: with where it came from.
        from moderator.audit.db.connect import normalize_url

        try:
            normalize_url(url)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("audit.url: ")) from None
        return url

    @field_validator("api_tokens")
    @classmethod
    def _token_hashes(cls, tokens: dict[str, list[str]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for digest, tenants in tokens.items():
            key = digest.strip().lower()
            if not _SHA256_HEX.fullmatch(key):
                raise ValueError(
                    f"api_tokens: a key of {len(digest)} characters is not a SHA-256 hex digest "
                    "(not echoed: it may be a raw token); make keys with moderator audit hash-token"
                )
            if not tenants:
                raise ValueError(f"api_tokens[{key[:12]}...] names no tenant")
            for tenant in tenants:
                if tenant != ALL_TENANTS and tenant_id_problem(tenant) is not None:
                    raise ValueError(
                        f"api_tokens[{key[:12]}...]: {tenant[:70]!r} is neither a tenant id "
                        f'({TENANT_ID_RULE}) nor "*" (every tenant); the token would read nothing'
                    )
            out[key] = list(tenants)
        return out

    @field_validator("retention_days")
    @classmethod
    def _retention(cls, days_by_tenant: dict[str, int]) -> dict[str, int]:
        for tenant, days in days_by_tenant.items():
            if tenant != "default" and tenant_id_problem(tenant) is not None:
                raise ValueError(
                    f'{tenant[:70]!r} is neither a tenant id ({TENANT_ID_RULE}) nor "default": '
                    "its retention would never apply"
                )
            if not 0 <= days <= MAX_RETENTION_DAYS:
                raise ValueError(
                    f"{tenant!r} must be 0..{MAX_RETENTION_DAYS} days, got "
                    f"{days} (leave the tenant out to keep its records forever)"
                )
        return days_by_tenant

    @field_validator("anchor_s3_uri")
    @classmethod
    def _anchor_uri(cls, uri: str | None) -> str | None:
        if uri is not None and (not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]):
            raise ValueError(f"must look like s3://bucket/prefix, got {uri!r}")
        return uri


class HttpSettings(_Section):
    """The one observability port: /metrics, /healthz and /readyz (docs/observability.md)."""

    port: int = Field(default=9400, ge=0, le=65535, description="0 disables the endpoint")
    # Every interface: the kubelet's probes and Prometheus connect from outside the pod. The
    # endpoint is read-only and shows counts, tenant ids and versions, never a secret;
    # 127.0.0.1 keeps it on the machine.
    host: str = Field(default="0.0.0.0", min_length=1, description="address to listen on")  # noqa: S104
    stall_s: float = Field(
        default=180.0,
        ge=10,
        description="/healthz answers 503 once one turn of the consume loop has lasted this "
        "long (a call that never returned); the longest legitimate turn is about 120 s (a "
        "checkpoint replacing a producer whose call hung)",
    )


class TelemetrySettings(_Section):
    """Traces (docs/observability.md, "Traces"); metrics are always served on `http`."""

    traces: Literal["none", "console", "otlp"] = Field(
        default="none", description="span exporter: none, console (stderr) or otlp"
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector base URL, e.g. http://collector:4318 (unset: the "
        "OTEL_EXPORTER_OTLP_* environment)",
    )

    @model_validator(mode="after")
    def _plain_endpoint(self) -> TelemetrySettings:
        endpoint = self.otlp_endpoint
        if endpoint is not None:
            if not endpoint.startswith(("http://", "https://")):
                raise ValueError("otlp_endpoint: must be an http:// or https:// URL")
            if "@" in endpoint.split("://", 1)[1].split("/", 1)[0]:
                raise ValueError(
                    "otlp_endpoint: must not carry credentials; set OTEL_EXPORTER_OTLP_HEADERS"
                )
        return self


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    # Per-event lines (verdict, event_error, dead_lettered, malformed_skipped, checkpoint,
    # consumer_error) kept per second and name; the rest are counted on the next kept line.
    # 0: keep every line.
    hot_path_per_s: int = Field(default=20, ge=0)


class Settings(BaseSettings):
    """Everything the service reads at start-up. Built once at the edge and passed down."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
        hide_input_in_errors=True,
    )

    instance_id: str = Field(default_factory=socket.gethostname)
    kafka: KafkaSettings = KafkaSettings()
    s3: S3Settings = S3Settings()
    tenancy: TenancySettings = TenancySettings()
    fetch: FetchSettings = FetchSettings()
    engine: EngineSettings = EngineSettings()
    flow: FlowSettings = FlowSettings()
    cache: CacheSettings = CacheSettings()
    policies: PolicySettings = PolicySettings()
    audit: AuditSettings = AuditSettings()
    http: HttpSettings = HttpSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    log: LogSettings = LogSettings()

    @field_validator("instance_id")
    @classmethod
    def _instance_named(cls, instance_id: str) -> str:
        if not instance_id.strip():
            raise ValueError(
                "empty: it names this pod's Kafka clients and transactional id "
                "(moderator-{group_id}-{instance_id}), which no two pods may share; leave it "
                "unset for the host name"
            )
        return instance_id

    # On Settings, not EngineSettings: an EngineSettings built alone (the engine's own tests)
    # still reaches the engine, which reports a bad URL as well.
    @field_validator("engine")
    @classmethod
    def _engine_url(cls, engine: EngineSettings) -> EngineSettings:
        url = engine.base_url
        if url and not _http_url(url):
            raise ValueError(
                "base_url: expected an http:// or https:// URL with a host, e.g. "
                f"http://127.0.0.1:23333/v1, got {mask_passwords(url)[:200]!r}"
            )
        if url and has_userinfo(url):
            raise ValueError(
                "base_url: no user or password in the URL (they would be sent as basic auth "
                "and shown wherever the URL is): put the key in engine.openai.api_key"
            )
        if url and re.search(r"[?#]", url):
            raise ValueError(
                "base_url: no query string or fragment (the engine appends /models and "
                "/chat/completions to the URL); a key goes in engine.openai.api_key"
            )
        return engine

    @property
    def transactional_id(self) -> str:
        return self.kafka.transactional_id or f"moderator-{self.kafka.group_id}-{self.instance_id}"

    @property
    def group_instance_id(self) -> str | None:
        """The consumer's static group membership id (None: a dynamic member)."""
        if not self.kafka.static_membership:
            return None
        return f"moderator-{self.kafka.group_id}-{self.instance_id}"


def _http_url(url: str) -> bool:
    """Whether `url` is http:// or https:// with a host."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class _Layer(PydanticBaseSettingsSource):
    """A fixed mapping of values as one settings source (the YAML file's contents)."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def load_settings(
    config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Build and validate the settings; raise ConfigError with one line naming the key.

    Precedence: `overrides` (CLI flags, dotted keys) > MODERATOR_* environment > the YAML file
    > defaults.
    """
    file_values = _read_yaml(config_file) if config_file is not None else {}
    if config_file is not None:
        scalar = scalar_section(Settings, file_values)
        if scalar is not None:  # refused even where a flag would replace the whole section
            key, value = scalar
            raise ConfigError(
                f"configuration error: {key}: {section_problem(value)} (in {config_file})"
            )

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _Layer(settings_cls, file_values))

    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    try:
        return _Loaded(**_nest(given))
    except ValidationError as exc:
        sources = Sources(config_file, file_values, dict(os.environ), given)
        raise ConfigError(validation_line(exc, Settings, sources)) from exc
    except SettingsError as exc:  # an environment value that should be JSON and is not
        raise ConfigError(env_problem(exc, os.environ, Settings)) from exc


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {exc.start})") from exc
    except ValueError as exc:  # a NUL in the path
        raise ConfigError(f"config file {str(path)!a}: invalid path ({exc})") from exc
    try:
        doc = load_unique(text)
    except DuplicateKey as exc:
        raise ConfigError(f"config file {path} line {exc.line}: duplicate key {exc.key!r}") from exc
    except yaml.YAMLError as exc:
        line, problem = yaml_problem(exc, text)
        where = f" line {line}" if line is not None else ""
        raise ConfigError(f"config file {path}{where}: {problem}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    return doc


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """`{"engine.kind": "fake"}` → `{"engine": {"kind": "fake"}}`; None values are dropped."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        if value is None:
            continue
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested
