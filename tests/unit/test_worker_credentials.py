"""The worker's Faust clients reach a TLS + SASL/SCRAM cluster like every other client."""

from __future__ import annotations

from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from streams.pipeline.app import broker_credentials, create_app
from streams.settings import KafkaSettings, WorkerSettings


def test_sasl_scram_over_tls_reaches_faust_s_kafka_clients() -> None:
    kafka = KafkaSettings(
        bootstrap_servers="kafka-0:9093,kafka-1:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="govesb-worker",
        sasl_password="s3cret-scram",  # type: ignore[arg-type]  # noqa: S106 - a test value
    )
    app, _ = create_app(WorkerSettings(kafka=kafka), ["esb.ingress.nida"])
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == (
        "govesb-worker",
        "s3cret-scram",
    )
    assert auth["ssl_context"] is not None
    assert [str(url) for url in app.conf.broker] == ["kafka://kafka-0:9093", "kafka://kafka-1:9093"]


def test_tls_without_sasl_and_plain_tcp() -> None:
    tls = credentials_to_aiokafka_auth(broker_credentials(KafkaSettings(security_protocol="SSL")))
    assert tls["security_protocol"] == "SSL"
    assert tls["ssl_context"] is not None
    assert broker_credentials(KafkaSettings()) is None
