"""Settings of the connector processes (one frozen model per process)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.settings import (
    DEFAULT_CATALOG,
    DemoKeyPolicy,
    IndexSettings,
    KafkaSettings,
    KeyIds,
    SchemaRegistrySettings,
    TracingSettings,
)

MIN_CLIENT_SECRET_CHARS = 16
MIN_TOKEN_KEY_CHARS = 32


class SinkSettings(BaseSettings):
    """``govesb connect http-sink``: one process per subscriber endpoint.

    Endpoint secrets named by ``secret_ref`` in the registry come from
    ``GOVESB_SECRETS__<SECRET_REF>`` (e.g. ``GOVESB_SECRETS__UTUMISHI_SINK_TOKEN``).
    """

    model_config = SettingsConfigDict(
        env_prefix="GOVESB_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    tracing: TracingSettings = TracingSettings()
    subscriber: str = Field(
        default="",
        description="institution whose `esb.deliver.<institution>` this sink sends to the HTTP "
        "endpoint registered for it; `--subscriber` sets it",
    )
    web_host: str = Field(
        default="127.0.0.1",
        description="address `/health` and `/metrics` listen on; `127.0.0.1`: this machine only",
    )
    web_port: int = Field(
        default=6067, description="port of `/health` and `/metrics`; `--web-port` overrides it"
    )
    signing_key_file: Path | None = Field(default=None, description="the bus key (re-signing)")
    signing_key_id: str | None = Field(
        default=None,
        description="key id of the bus key (`ce_sigkeyid` of bodies the sink signs); the sink "
        "refuses to start without both",
    )
    secrets: dict[str, SecretStr] = {}
    max_attempts: int = Field(
        default=8,
        description="attempts per record before it goes to `esb.dlq.<subscriber>`; attempts "
        "while the circuit breaker is not closed do not count",
    )
    backoff_initial_s: float = Field(
        default=0.2,
        description="backoff ceiling after the first failed attempt, in seconds; it doubles "
        "each attempt and the wait is random up to it (full jitter)",
    )
    backoff_max_s: float = Field(
        default=30.0,
        description="cap of the backoff ceiling, in seconds; a longer `Retry-After` is honoured "
        "up to 4 times this",
    )
    concurrency: int = Field(default=16, description="keys delivered in parallel")
    batch_max_records: int = Field(
        default=500,
        description="most records fetched per poll; a partition's offset is committed once "
        "every record fetched from it is delivered or dead-lettered",
    )
    max_poll_interval_ms: int = Field(
        default=300_000,
        description="longest the consumer may go without polling before it leaves its group; "
        "the sink keeps polling while deliveries wait (their partitions are paused), so an "
        "endpoint outage does not reach it",
    )
    session_timeout_ms: int = Field(
        default=10_000,
        description="how long the group coordinator waits for a heartbeat before it removes "
        "the sink from its group",
    )
    heartbeat_interval_ms: int = Field(
        default=3_000, description="how often the consumer sends heartbeats to its group"
    )
    commit_interval_s: float = Field(
        default=0.5,
        ge=0.0,
        description="how often the offsets of delivered records are committed, in seconds (0: "
        "after every partition's batch); a stop or a rebalance commits at once. A record "
        "delivered after the last commit is delivered again after a crash (the same "
        "`Idempotency-Key`)",
    )
    flush_wait_s: float = Field(
        default=10.0,
        description="how long a stop or a rebalance waits for deliveries in flight; what is "
        "not done by then is not committed, and is delivered again (same `Idempotency-Key`) "
        "by the partition's next consumer",
    )
    max_response_bytes: int = Field(
        default=65_536,
        description="most bytes of a response body (endpoint or token endpoint) the sink reads; "
        "the rest is not read and the connection is closed; a dead letter keeps the first 200 "
        "characters",
    )
    breaker_threshold: int = Field(
        default=5,
        description="consecutive retryable failures (connection errors, timeouts, 408, 425, "
        "429, 500, 502-504) that open the circuit breaker: no requests while it is open",
    )
    breaker_cooldown_s: float = Field(
        default=10.0,
        description="seconds the breaker stays open before one trial request (half-open)",
    )
    client_cert_file: Path | None = Field(default=None, description="PEM certificate for mTLS")
    client_key_file: Path | None = Field(default=None, description="PEM private key for mTLS")
    ca_file: Path | None = Field(
        default=None, description="PEM CA bundle the endpoint's certificate must chain to"
    )

    def secret(self, name: str | None) -> SecretStr | None:
        """The secret called ``name`` (case-insensitive), if configured."""
        if not name:
            return None
        wanted = name.lower()
        return next((v for k, v in self.secrets.items() if k.lower() == wanted), None)


class GatewaySettings(DemoKeyPolicy):
    """``govesb connect gateway``.

    Institutions' client secrets (OAuth2 client credentials; also accepted as ``X-API-Key``)
    come from ``GOVESB_CLIENTS__<INSTITUTION>``, at least 16 characters each; the client id is
    the institution id.
    """

    model_config = SettingsConfigDict(
        env_prefix="GOVESB_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    tracing: TracingSettings = TracingSettings()
    catalog: Path = Field(
        default=DEFAULT_CATALOG,
        description="the event catalogue YAML: JSON data is validated against, and encoded "
        "with, its schemas",
    )
    web_host: str = Field(
        default="127.0.0.1",
        description="address the API, `/health` and `/metrics` listen on; `127.0.0.1`: this "
        "machine only",
    )
    web_port: int = Field(
        default=8088, description="port of the gateway; `--web-port` overrides it"
    )
    signing_key_file: Path | None = Field(
        default=None,
        description="PEM or base64 DER private key of the gateway (its own, not the delivery "
        "key): signs the events the gateway produces and its push-request replies",
    )
    signing_key_id: str | None = Field(
        default=None,
        description="key id of that gateway key (`ce_sigkeyid`), which workers accept only on "
        "what the gateway publishes (their `GOVESB_GATEWAY_KEY_IDS`); the gateway refuses to "
        "start without both",
    )
    clients: dict[str, SecretStr] = Field(default_factory=dict)
    max_body_bytes: int = Field(
        default=1_000_000,
        description="largest request body, and largest encoded event, in bytes; larger: 413",
    )
    rate_per_s: float = Field(
        default=100.0,
        gt=0,
        description="requests per second each institution may make (token bucket); beyond: 429 "
        "with `Retry-After`",
    )
    burst: float = Field(
        default=200.0,
        ge=1,
        description="requests an institution may make at once before `rate_per_s` applies",
    )
    token_ttl_s: int = Field(
        default=3600,
        gt=0,
        description="lifetime of `/oauth/token` access tokens, in seconds; a token carries its "
        "client id and expiry under an HMAC of `token_key`, so every gateway process with that "
        "key accepts it until it expires",
    )
    token_key: SecretStr | None = Field(
        default=None,
        description="HMAC key of the access tokens (at least 32 characters): gateways on "
        "several machines given the same key accept each other's tokens. Unset: a random key "
        "made at start (by `--processes N` once, for all its processes), so tokens do not "
        "outlive the command",
    )
    process_count: int = Field(
        default=1,
        ge=1,
        description="gateway processes sharing `web_port` (`SO_REUSEPORT`), one per core; "
        "process i also serves `/health` and `/metrics` on `web_port + 1 + i`; one that dies is "
        "started again; `--processes` overrides it",
    )
    max_live_tokens: int = Field(
        default=100_000,
        ge=1,
        description="most unexpired tokens a process counts in `govesb_gateway_live_tokens` "
        "(tokens beyond it stay valid: they are checked by their HMAC, not looked up)",
    )
    token_failures_per_client: int = Field(
        default=10,
        ge=1,
        description="failed `/oauth/token` attempts allowed per client id per "
        "`token_limit_period_s` (that many at once, then evenly over the period); beyond: 429 "
        "with `Retry-After` for that client id, whatever the secret",
    )
    token_failures_per_ip: int = Field(
        default=30,
        ge=1,
        description="failed attempts (`/oauth/token`, or a wrong `X-API-Key`) allowed per "
        "source address per `token_limit_period_s`; beyond: 429 for every client from it. The "
        "address is the TCP peer's (`X-Forwarded-For` is not trusted): behind a proxy that "
        "hides the clients' addresses, all of them share this limit",
    )
    tokens_per_client: int = Field(
        default=10,
        ge=1,
        description="access tokens issued per client id per `token_limit_period_s`; beyond: 429",
    )
    token_limit_period_s: float = Field(
        default=60.0,
        gt=0,
        description="the period, in seconds, of `token_failures_per_client`, "
        "`token_failures_per_ip` and `tokens_per_client`",
    )
    produce_timeout_s: float = Field(
        default=10.0, description="how long a request waits for the broker's ack before 503"
    )

    @field_validator("token_key")
    @classmethod
    def _key_long_enough(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and len(key.get_secret_value()) < MIN_TOKEN_KEY_CHARS:
            raise ValueError(f"GOVESB_TOKEN_KEY needs at least {MIN_TOKEN_KEY_CHARS} characters")
        return key

    @field_validator("clients")
    @classmethod
    def _long_enough(cls, clients: dict[str, SecretStr]) -> dict[str, SecretStr]:
        # An empty secret would let an empty X-API-Key in; a short one is guessed too soon.
        short = sorted(
            f"GOVESB_CLIENTS__{client.upper()}"
            for client, secret in clients.items()
            if len(secret.get_secret_value()) < MIN_CLIENT_SECRET_CHARS
        )
        if short:
            raise ValueError(
                f"client secrets need at least {MIN_CLIENT_SECRET_CHARS} characters: "
                f"{', '.join(short)}"
            )
        return clients


class ProviderSettings(DemoKeyPolicy):
    """``govesb connect provider``: one process (or several, one group) per provider.

    It signs the requests it sends to the provider with the bus's delivery key
    (``GOVESB_DELIVERY_KEY_FILE``) and the answer events it produces with the gateway's key
    (``GOVESB_SIGNING_KEY_FILE`` / ``GOVESB_SIGNING_KEY_ID``): like the gateway, it is an edge
    of the bus that verified the provider's own signature. Endpoint secrets named by
    ``secret_ref`` come from ``GOVESB_SECRETS__<SECRET_REF>``.
    """

    model_config = SettingsConfigDict(
        env_prefix="GOVESB_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    catalog: Path = Field(
        default=DEFAULT_CATALOG,
        description="the event catalogue YAML: answers are validated against, and encoded "
        "with, its services' response schemas",
    )
    institution: str = Field(
        default="",
        description="the provider whose `esb.request.<institution>` this connector answers; "
        "`--institution` sets it",
    )
    system: str = Field(
        default="",
        description="the provider's system named in the answers' `ce_source`; empty: the "
        "institution's first system in the registry",
    )
    web_host: str = Field(
        default="127.0.0.1",
        description="address `/health` and `/metrics` listen on; `127.0.0.1`: this machine only",
    )
    web_port: int = Field(
        default=6068, description="port of `/health` and `/metrics`; `--web-port` overrides it"
    )
    delivery_key_file: Path | None = Field(
        default=None,
        description="the bus's delivery key (PEM or base64 DER): signs the requests sent to "
        "the provider, which verifies them with the key of the bus it knows",
    )
    signing_key_file: Path | None = Field(
        default=None, description="the gateway's key: signs the answer events"
    )
    signing_key_id: str | None = Field(
        default=None,
        description="key id of that gateway key (one of the workers' `GOVESB_GATEWAY_KEY_IDS`)",
    )
    gateway_key_ids: KeyIds = Field(
        default=[],
        description="the bus's gateway key ids, never accepted on a routed request (the "
        "connector's own `signing_key_id` is never either)",
    )
    secrets: dict[str, SecretStr] = Field(default_factory=dict)
    backoff_initial_s: float = Field(
        default=0.1,
        description="backoff ceiling after the first failed attempt, in seconds; it doubles "
        "each attempt (full jitter), and no wait goes past the request's deadline",
    )
    backoff_max_s: float = Field(default=2.0, description="cap of the backoff ceiling, in seconds")
    concurrency: int = Field(
        default=64,
        ge=1,
        description="requests being answered at once (all partitions); a partition's offset "
        "is committed past the requests whose answers are acknowledged",
    )
    commit_interval_s: float = Field(
        default=0.5,
        ge=0.0,
        description="how often the answered requests' offsets are committed, in seconds (0: "
        "after every answer); a stop or a rebalance commits at once. A request answered "
        "after the last commit is answered again after a crash (the same answer id; the "
        "pipeline takes one answer per request)",
    )
    session_timeout_ms: int = Field(default=10_000, description="consumer group session timeout")
    heartbeat_interval_ms: int = Field(default=3_000, description="consumer heartbeat interval")
    flush_wait_s: float = Field(
        default=10.0,
        description="how long a stop or a rebalance waits for requests in flight; those not "
        "answered by then are answered by the partition's next consumer",
    )
    max_answer_bytes: int = Field(
        default=1_000_000,
        description="largest answer body read from the provider, and largest encoded answer, "
        "in bytes; larger: an `invalid-answer` error answer",
    )

    def credentials(self) -> dict[str, str]:
        """Every configured secret by lower-case name (never logged)."""
        return {name.lower(): value.get_secret_value() for name, value in self.secrets.items()}


class PortalSettings(BaseSettings):
    """``govesb portal``: the web portal for institutions and operators.

    Institutions sign in with their gateway client credentials (``GOVESB_CLIENTS__<ID>``, the
    same variables as the gateway's); operators with an account from
    ``GOVESB_OPERATORS__<NAME>=<password>`` (at least 16 characters). The processes whose
    ``/health`` and ``/metrics`` the portal shows come from ``GOVESB_PROCESSES__<NAME>=<base
    URL>`` (e.g. ``GOVESB_PROCESSES__WORKER=http://127.0.0.1:6066``).
    """

    model_config = SettingsConfigDict(
        env_prefix="GOVESB_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    trace: IndexSettings = IndexSettings()
    catalog: Path = Field(
        default=DEFAULT_CATALOG,
        description="the event catalogue YAML: types, field docs, PII marks, versions",
    )
    samples: Path | None = Field(
        default=None,
        description="one sample payload per event type (YAML keyed by type); default: "
        "`samples.yaml` beside the catalogue",
    )
    registry_file: Path | None = Field(
        default=None,
        description="the registry YAML operators edit: what it would change in `esb.registry` "
        "is shown as pending changes (none given: no pending changes shown)",
    )
    web_host: str = Field(
        default="127.0.0.1",
        description="address the portal listens on; `127.0.0.1`: this machine only",
    )
    web_port: int = Field(default=8090, description="port of the portal; `--web-port` overrides it")
    clients: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="an institution's client secret, as the gateway has it: the institution "
        "signs in with its id and this secret",
    )
    operators: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="an operator account's password (at least 16 characters): operators see "
        "every institution, the flow, health, audit chains, and replay dead letters",
    )
    processes: dict[str, str] = Field(
        default_factory=dict,
        description="base URL of a bus process (worker, sink, gateway) whose `/health` and "
        "`/metrics` the portal shows",
    )
    session_ttl_s: float = Field(
        default=1800.0,
        gt=0,
        description="a session ends after this many seconds without a request; signing in "
        "again is needed after",
    )
    max_sessions: int = Field(
        default=10_000, ge=1, description="most sessions held at once (the oldest go first)"
    )
    secure_cookies: bool = Field(
        default=False,
        description="send the session cookie only over HTTPS (set it behind a TLS proxy)",
    )
    sign_in_failures_per_ip: int = Field(
        default=30,
        ge=1,
        description="failed sign-ins allowed per source address per minute; beyond: refused",
    )
    read_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="longest a page waits for Kafka (rejections, dead letters, audit chains) "
        "or for a process's `/health` and `/metrics`",
    )

    @field_validator("clients", "operators")
    @classmethod
    def _long_enough(cls, secrets_: dict[str, SecretStr]) -> dict[str, SecretStr]:
        short = sorted(
            name for name, secret in secrets_.items()
            if len(secret.get_secret_value()) < MIN_CLIENT_SECRET_CHARS
        )  # fmt: skip
        if short:
            raise ValueError(
                f"secrets need at least {MIN_CLIENT_SECRET_CHARS} characters: {', '.join(short)}"
            )
        return clients_lower(secrets_)


def clients_lower(secrets_: dict[str, SecretStr]) -> dict[str, SecretStr]:
    """Names from environment variables are upper case: ids are lower case."""
    return {name.lower(): secret for name, secret in secrets_.items()}
