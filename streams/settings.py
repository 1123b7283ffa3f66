"""Settings of GovESB processes: one frozen pydantic-settings model per process.

Environment variables use the prefix ``GOVESB_`` and ``__`` between nested models, e.g.
``GOVESB_KAFKA__BOOTSTRAP_SERVERS=broker:9092`` or ``GOVESB_SCHEMA_REGISTRY__URL=…``.
Secrets are ``SecretStr``: their values never appear in logs, reprs or error messages.
Nothing else in the code base reads ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CATALOG = REPO_ROOT / "schemas" / "catalog.yaml"


class KafkaSettings(BaseModel):
    """How to reach the Kafka cluster."""

    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "govesb"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None

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


class SchemaRegistrySettings(BaseModel):
    """How to reach the Confluent-compatible schema registry."""

    model_config = ConfigDict(frozen=True)

    url: str = "http://127.0.0.1:8081/apis/ccompat/v7"
    username: str | None = None
    password: SecretStr | None = None

    def client_config(self) -> dict[str, Any]:
        """Configuration for confluent-kafka's (Async)SchemaRegistryClient."""
        config: dict[str, Any] = {"url": self.url.rstrip("/")}
        if self.username and self.password:
            config["basic.auth.user.info"] = f"{self.username}:{self.password.get_secret_value()}"
        return config


class TopicSettings(BaseModel):
    """Partitions and replication of the topics ``govesb registry apply`` creates."""

    model_config = ConfigDict(frozen=True)

    replication_factor: int | None = Field(
        default=None, description="None: 3, or the number of brokers when fewer"
    )
    ingress_partitions: int = 6
    deliver_partitions: int = 6
    rejected_partitions: int = 3
    dlq_partitions: int = 3
    audit_partitions: int = 3
    retention_days: int = 7
    rejected_retention_days: int = 30


class CliSettings(BaseSettings):
    """Settings of the ``govesb`` command line."""

    model_config = SettingsConfigDict(
        env_prefix="GOVESB_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    topics: TopicSettings = TopicSettings()
    catalog: Path = DEFAULT_CATALOG


class WorkerSettings(BaseSettings):
    """Settings of the pipeline worker (``govesb worker``)."""

    model_config = SettingsConfigDict(
        env_prefix="GOVESB_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    app_id: str = "govesb-pipeline"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    signing_key_file: Path | None = Field(
        default=None, description="PEM or base64 DER private key the bus re-signs deliveries with"
    )
    signing_key_id: str | None = None
    max_in_flight: int = Field(default=2000, description="events processed but not yet acked")
    max_value_bytes: int = 1_000_000
    max_future_skew_s: float = 300.0
    duplicate_window_s: float = 24 * 3600.0
    shutdown_timeout_s: float = 20.0
    commit_interval_s: float = 1.0
