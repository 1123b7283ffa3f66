"""Settings of the connector processes (one frozen model per process)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.settings import DEFAULT_CATALOG, KafkaSettings, SchemaRegistrySettings


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
    subscriber: str = ""
    web_host: str = "127.0.0.1"
    web_port: int = 6067
    signing_key_file: Path | None = Field(default=None, description="the bus key (re-signing)")
    signing_key_id: str | None = None
    secrets: dict[str, SecretStr] = {}
    max_attempts: int = 8
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 30.0
    concurrency: int = Field(default=16, description="keys delivered in parallel")
    batch_max_records: int = 500
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 10.0
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


class GatewaySettings(BaseSettings):
    """``govesb connect gateway``.

    Institutions' client secrets (OAuth2 client credentials; also accepted as ``X-API-Key``)
    come from ``GOVESB_CLIENTS__<INSTITUTION>``; the client id is the institution id.
    """

    model_config = SettingsConfigDict(
        env_prefix="GOVESB_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    catalog: Path = DEFAULT_CATALOG
    web_host: str = "127.0.0.1"
    web_port: int = 8088
    signing_key_file: Path | None = None
    signing_key_id: str | None = None
    clients: dict[str, SecretStr] = {}
    max_body_bytes: int = 1_000_000
    rate_per_s: float = 100.0
    burst: float = 200.0
    token_ttl_s: int = 3600
    produce_timeout_s: float = Field(
        default=10.0, description="how long a request waits for the broker's ack before 503"
    )
