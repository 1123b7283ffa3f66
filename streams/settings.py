"""Settings of GovESB processes: one frozen pydantic-settings model per process.

Environment variables use the prefix ``GOVESB_`` and ``__`` between nested models, e.g.
``GOVESB_KAFKA__BOOTSTRAP_SERVERS=broker:9092`` or ``GOVESB_SCHEMA_REGISTRY__URL=…``.
Secrets are ``SecretStr``: their values never appear in logs, reprs or error messages.
Nothing else in the code base reads ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
# aiokafka keeps one open batch per partition and send() waits while it is full and the one
# request in flight (idempotence) is out. Processes that write many records to one partition
# (the worker's audit chain, the sink's receipts) waited a broker round trip each time a
# 16 KiB batch filled. Below the broker's 1 MiB default message size.
PRODUCE_BATCH_BYTES = 512 * 1024
DEFAULT_CATALOG = REPO_ROOT / "schemas" / "catalog.yaml"
# The key ids of the private keys published in deploy/demo-keys (for `make demo` and the
# tests): they protect nothing, so a worker refuses them unless told it is the dev stack.
DEMO_KEY_IDS = (
    "ega-d06f8e0a5d19",
    "ega-811cb62f3e2d",
    "nida-2e3f1f063154",
    "rita-e1ad5e26a22d",
    "brela-a24c4621961c",
    "tra-3509e6ac2798",
    "ardhi-7482b258b0ba",
    "moh-563d2616bddc",
    "utumishi-b991186b7bdd",
)


def bootstrap_list(servers: str) -> str:
    """``servers`` as a comma-separated ``host:port`` list (spaces dropped); ``ValueError``
    saying what is wrong, never quoting the value, when it lists none or a malformed one."""
    entries = [entry.strip() for entry in servers.split(",")]
    if not any(entries):
        raise ValueError("is empty: list the brokers as host:port, separated by commas")
    for entry in entries:
        host, colon, port = entry.rpartition(":")
        if not entry or any(c.isspace() for c in entry) or (colon and not (host and port)):
            raise ValueError("has an entry that is not host:port (entries separated by commas)")
        if colon and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError("has a port that is not a number from 1 to 65535")
    return ",".join(entries)


def registry_urls(urls: str) -> str:
    """``urls`` as one or more comma-separated ``http(s)://host…`` URLs (what confluent-kafka's
    registry client accepts); ``ValueError`` saying what is wrong, never quoting the value
    (a URL may carry credentials)."""
    entries = [entry.strip() for entry in urls.split(",")]
    if not any(entries):
        raise ValueError("is empty: give the registry's http:// or https:// URL")
    for entry in entries:
        try:
            parts = urlsplit(entry)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise ValueError("is not a URL (a malformed host or port)") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
    return ",".join(entries)


class KafkaSettings(BaseModel):
    """How to reach the Kafka cluster.

    Every Kafka client of every process uses all of these (the worker's Faust consumer and
    producer get them as Faust broker credentials).
    """

    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        description="brokers to contact first, `host:port` separated by commas; "
        "`govesb --bootstrap` overrides it",
    )
    client_id: str = Field(
        default="govesb", description="client id the processes send to the brokers (logs, quotas)"
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="how clients connect: plain TCP, TLS (`SSL`), or SASL over plain TCP or TLS",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None,
        description="SASL mechanism, for the `SASL_*` protocols; unset: no SASL credentials "
        "are sent",
    )
    sasl_username: str | None = Field(
        default=None, description="SASL user name (sent only when `sasl_mechanism` is set)"
    )
    sasl_password: SecretStr | None = Field(
        default=None, description="SASL password (sent only when `sasl_mechanism` is set)"
    )
    ssl_cafile: Path | None = Field(
        default=None,
        description="PEM CA bundle the brokers' certificates must chain to, for `SSL` and "
        "`SASL_SSL` (host names are checked); unset: the system's CAs",
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _a_bootstrap_list(cls, servers: str) -> str:
        return bootstrap_list(servers)

    def aiokafka_options(self) -> dict[str, Any]:
        """Keyword arguments common to aiokafka producers, consumers and admin clients."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None
            )
        return options

    def librdkafka_options(self) -> dict[str, Any]:
        """librdkafka (confluent-kafka) configuration common to its clients."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol.lower(),
        }
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username or ""
            config["sasl.password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else ""
            )
        if self.ssl_cafile is not None:
            config["ssl.ca.location"] = str(self.ssl_cafile)
        return config

    def durable_producer_options(self, **extra: Any) -> dict[str, Any]:
        """A producer's arguments for the bus: acknowledged by every in-sync replica, and
        idempotent, so a retried send is written once. ``extra`` adds batching settings."""
        return {**self.aiokafka_options(), "acks": "all", "enable_idempotence": True, **extra}


class SchemaRegistrySettings(BaseModel):
    """How to reach the Confluent-compatible schema registry."""

    model_config = ConfigDict(frozen=True)

    url: str = Field(
        default="http://127.0.0.1:8081/apis/ccompat/v7",
        description="base URL of the Confluent-compatible API (Apicurio: `…/apis/ccompat/v7`); "
        "`govesb --schema-registry` overrides it",
    )
    username: str | None = Field(
        default=None, description="HTTP Basic user name; sent only when `password` is set too"
    )
    password: SecretStr | None = Field(
        default=None, description="HTTP Basic password; sent only when `username` is set too"
    )

    @field_validator("url")
    @classmethod
    def _registry_urls(cls, urls: str) -> str:
        return registry_urls(urls)

    def client_config(self) -> dict[str, Any]:
        """Configuration for confluent-kafka's (Async)SchemaRegistryClient."""
        config: dict[str, Any] = {"url": self.url.rstrip("/")}
        if self.username and self.password:
            config["basic.auth.user.info"] = f"{self.username}:{self.password.get_secret_value()}"
        return config


class TopicSettings(BaseModel):
    """Partitions and replication of the topics ``govesb registry apply`` creates.

    Only missing topics are created: an existing topic keeps its partitions and retention.
    """

    model_config = ConfigDict(frozen=True)

    replication_factor: int | None = Field(
        default=None, description="None: 3, or the number of brokers when fewer"
    )
    ingress_partitions: int = Field(
        default=6, description="partitions of each `esb.ingress.<institution>` topic"
    )
    deliver_partitions: int = Field(
        default=6,
        description="partitions of each `esb.deliver.<institution>` topic: the most consumers "
        "of one subscriber's group that get records",
    )
    rejected_partitions: int = Field(
        default=3, description="partitions of each `esb.rejected.<institution>` topic"
    )
    dlq_partitions: int = Field(
        default=3, description="partitions of each `esb.dlq.<institution>` topic"
    )
    audit_partitions: int = Field(
        default=3, description="partitions of `esb.audit` (kept forever: `retention.ms=-1`)"
    )
    duplicates_retention_hours: int = Field(
        default=25,
        description="retention of `esb.duplicates` (the duplicate window's events), in hours: "
        "at least the workers' `duplicate_window_s`",
    )
    retention_days: int = Field(
        default=7, description="retention of `esb.ingress.*` and `esb.deliver.*` topics, in days"
    )
    rejected_retention_days: int = Field(
        default=30, description="retention of `esb.rejected.*` and `esb.dlq.*` topics, in days"
    )


class TracingSettings(BaseModel):
    """OpenTelemetry spans of a process (gateway, worker, HTTP sink), exported over OTLP/HTTP.

    Trace context (W3C ``traceparent``) is carried through the bus whether or not spans are
    exported; without an endpoint no span is recorded and nothing is sent anywhere.
    """

    model_config = ConfigDict(frozen=True)

    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP (protobuf) traces URL of the collector, with its path, e.g. "
        "`http://otel-collector:4318/v1/traces`; unset: no spans are recorded, only the trace "
        "headers are carried",
    )
    export_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="longest a finished span waits before it is sent to the collector, in "
        "seconds (sooner once 512 wait; sent from a thread of their own; past 2,048 waiting, "
        "as while the collector is down, new ones are dropped)",
    )
    export_timeout_s: float = Field(
        default=10.0, gt=0, description="how long one export may take, in seconds"
    )

    @field_validator("otlp_endpoint")
    @classmethod
    def _an_http_url(cls, url: str | None) -> str | None:
        if not url:
            return None
        if "," in url:
            raise ValueError("must be one http:// or https:// URL")
        url = registry_urls(url)
        if "@" in urlsplit(url).netloc:  # the exporter's errors quote the URL
            raise ValueError("must not carry credentials")
        return url


class CliSettings(BaseSettings):
    """Settings of the ``govesb`` command line."""

    model_config = SettingsConfigDict(
        env_prefix="GOVESB_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    topics: TopicSettings = TopicSettings()
    catalog: Path = Field(
        default=DEFAULT_CATALOG,
        description="the event catalogue YAML (`govesb publish --sample` reads `samples.yaml` "
        "beside it); `govesb --catalog` overrides it",
    )


def _comma_separated(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# Key ids in an environment variable: separated by commas (one id is a list of one).
KeyIds = Annotated[list[str], NoDecode, BeforeValidator(_comma_separated)]


class DemoKeyPolicy(BaseSettings):
    """Which key ids are the published demo keys, and whether this process accepts them.

    Shared by the processes that verify or sign with keys (worker, gateway).
    """

    model_config = SettingsConfigDict(
        env_prefix="GOVESB_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    demo_key_ids: KeyIds = Field(
        default=list(DEMO_KEY_IDS),
        description="key ids of the published demo keys (`deploy/demo-keys`), separated by "
        "commas: refused — for events (worker) and pushes (gateway), and as the process's own "
        "signing key — unless `allow_demo_keys`",
    )
    allow_demo_keys: bool = Field(
        default=False,
        description="accept the demo keys: only for the dev stack (`make demo`, compose) and "
        "the tests",
    )

    @property
    def refused_key_ids(self) -> frozenset[str]:
        """Key ids this process never accepts: the demo keys, unless they are allowed."""
        return frozenset() if self.allow_demo_keys else frozenset(self.demo_key_ids)

    def demo_key_problem(self, key_id: str | None) -> str | None:
        """Why this process must not sign with ``key_id``, if it is a refused demo key."""
        if key_id in self.refused_key_ids:
            return (
                f"{key_id} is a published demo key: generate the bus's own "
                "(`govesb keys generate --institution <operator>`), or set "
                "GOVESB_ALLOW_DEMO_KEYS=true in the dev stack only"
            )
        return None


class WorkerSettings(DemoKeyPolicy):
    """Settings of the pipeline worker (``govesb worker``)."""

    kafka: KafkaSettings = KafkaSettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    app_id: str = Field(
        default="govesb-pipeline",
        description="Faust app id and consumer group: workers with the same id share the "
        "ingress partitions; also labels the lag metric and the audit chains",
    )
    web_host: str = Field(
        default="127.0.0.1",
        description="address `/health` and `/metrics` listen on; `127.0.0.1`: this machine "
        "only (`0.0.0.0` in a container)",
    )
    web_port: int = Field(
        default=6066,
        description="port of `/health` and `/metrics`; `govesb worker --web-port` overrides it",
    )
    signing_key_file: Path | None = Field(
        default=None,
        description="PEM or base64 DER private key the bus re-signs deliveries with (the "
        "delivery key: never the gateway's)",
    )
    signing_key_id: str | None = Field(
        default=None,
        description="key id of that delivery key, sent as `ce_sigkeyid`; the worker refuses to "
        "start without both",
    )
    gateway_key_ids: KeyIds = Field(
        default=[],
        description="key ids the bus's HTTP gateway signs with (keys of the operator in the "
        "registry), separated by commas: accepted only on events that came through the "
        "gateway (header `esb_via: gateway`). No other key of the operator — the delivery key "
        "included — is accepted on ingress",
    )
    registry_stale_after_s: float = Field(
        default=60.0,
        description="`/health` calls the registry view stale when `esb.registry` has records "
        "it has not read and it read nothing for this long, in seconds",
    )
    tracing: TracingSettings = TracingSettings()

    def key_problem(self) -> str | None:
        """Why this worker must not start with its delivery key, if it must not."""
        if self.signing_key_file is None or not self.signing_key_id:
            return (
                "set GOVESB_SIGNING_KEY_FILE and GOVESB_SIGNING_KEY_ID: the bus re-signs every "
                "delivery"
            )
        demo = self.demo_key_problem(self.signing_key_id)
        if demo:
            return demo
        if self.signing_key_id in self.gateway_key_ids:
            return f"{self.signing_key_id} is a gateway key: deliveries need the delivery key"
        return None

    max_in_flight: int = Field(default=2000, description="events processed but not yet acked")
    stream_buffer_maxsize: int = Field(
        default=4096,
        ge=1,
        description="records fetched and waiting for the pipeline (Faust's "
        "`stream_buffer_maxsize`); a partition is fetched again once the pipeline has emptied "
        "the buffer. Each waiting record holds its bytes, up to `GOVESB_MAX_VALUE_BYTES`",
    )
    max_in_flight_bytes: int = Field(
        default=256 * 1024 * 1024,
        description="bytes of the events processed but not yet acked (each ingress record plus "
        "every output of it); the agent waits while more are in flight. The default, 256 MiB, "
        "leaves room within the 1 GiB memory limit of `deploy/k8s/worker.yaml` for the "
        "process itself, the consumer's fetch buffers and the producer's batches; a record "
        "larger than the whole budget still passes, alone",
    )
    output_check_s: float = Field(
        default=15.0,
        description="how long an output may wait for the broker's acknowledgement before the "
        "worker asks the cluster whether its topic still exists and may be written, in "
        "seconds; a topic gone or refused makes the output `undeliverable`",
    )
    stuck_after_s: float = Field(
        default=60.0,
        description="`/health` answers 503 (check `outputs`) while the oldest event in flight "
        "has waited longer than this for its outputs to be acknowledged, in seconds",
    )
    max_value_bytes: int = Field(
        default=1_000_000,
        description="largest record value accepted, in bytes; a larger one is rejected as "
        "`oversize`",
    )
    max_future_skew_s: float = Field(
        default=300.0,
        description="how far `ce_time` may be ahead of the worker's clock, in seconds; further "
        "is rejected as `future-time`",
    )
    duplicate_window_s: float = Field(
        default=24 * 3600.0,
        description="how long an event (source and id) is remembered, in seconds (default 24 h); "
        "the same event at another offset within it is rejected as `duplicate`. Kept in memory "
        "and on `esb.duplicates`, so it survives restarts and rebalances",
    )
    duplicate_window_max_ids: int = Field(
        default=25_000_000,
        description="most events the duplicate window holds (21.3 bytes each: 25,000,000 take "
        "533 MB, 24 h at up to 289 events/s, 6.9 h at 1,000/s); past it the oldest quarter "
        "of the window is forgotten first",
    )
    shutdown_timeout_s: float = Field(
        default=20.0,
        description="graceful stop bound, in seconds: in-flight events get half of it to be "
        "acknowledged; the rest are read again later (at-least-once)",
    )
    commit_interval_s: float = Field(
        default=1.0,
        description="how often acknowledged ingress offsets are committed, in seconds (Faust "
        "`broker_commit_interval`); events after the last commit are read again after a crash",
    )
    output_client: Literal["aiokafka", "librdkafka"] = Field(
        default="aiokafka",
        description="the client that writes the worker's outputs: aiokafka (batches, requests "
        "and answers on the worker's event loop) or librdkafka (confluent-kafka: in its own "
        "threads). make bench on 2 cores shared with the broker: the same worker CPU per "
        "event either way, and more broker CPU with librdkafka (0.86 against 0.69 cores), so "
        "aiokafka stays the default",
    )
    output_linger_ms: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="how long the producer holds outputs back to send them together, in "
        "milliseconds; unset: 2 with librdkafka, which has no early send for a quiet bus "
        "(make bench, busy worker: 897 us of worker CPU per event at 2 ms, 808 at 8), 8 "
        "with aiokafka, which holds them only while the worker is busy (other events waiting, "
        "or more than 4 events within one linger: above 500 events/s at 8 ms), so that a "
        "quiet bus's outputs go at once",
    )

    @property
    def linger_ms(self) -> int:
        """``output_linger_ms``, or the output client's default."""
        if self.output_linger_ms is not None:
            return self.output_linger_ms
        return 2 if self.output_client == "librdkafka" else 8


class IndexSettings(BaseModel):
    """The trace index: where it is kept, for how long, and the key business keys are hashed
    with."""

    model_config = ConfigDict(frozen=True)

    database: Path = Field(
        default=Path("govesb-trace.sqlite"),
        description="the index's SQLite file (WAL; created when missing, rebuilt from "
        "`esb.audit` when deleted)",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="a `postgresql://user:password@host/db` URL (libpq form) to keep the index "
        "in PostgreSQL instead of the SQLite file (production: several readers, one follower)",
    )
    retention_days: float = Field(
        default=30.0,
        description="how long audit records are kept in the index, in days; older ones are "
        "not indexed and are pruned on every pass (`esb.audit` itself keeps them forever)",
    )
    subject_key: SecretStr | None = Field(
        default=None,
        description="hex of the key business keys are hashed with in the audit log "
        "(`govesb index subject-key --key-file <bus key>` prints it); `govesb track` needs it",
    )


class TraceSettings(BaseSettings):
    """Settings of the trace index and its commands (``govesb trace|track|index``)."""

    model_config = SettingsConfigDict(
        env_prefix="GOVESB_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    trace: IndexSettings = IndexSettings()
