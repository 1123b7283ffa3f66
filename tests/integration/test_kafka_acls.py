"""Kafka with SASL/SCRAM-SHA-512 over TLS and the ACLs ``govesb registry apply`` sets.

A secure bus of this module's own (``LocalBus(security=SecureListener())``: StandardAuthorizer
on KRaft, certificates made by the launcher, ``allow.everyone.if.no.acl.found=false``). The
operator's part is done as an operator would: SCRAM users for nida, rita, ega, the worker and
govesb-admin (``KafkaBroker.secure.add_scram_user``), then ``govesb registry apply`` run as the
super user over SASL_SSL. Every check is a real client (aiokafka, librdkafka, a real
``govesb worker``) against the broker, which is what accepts or refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)
from confluent_kafka import KafkaError as LibrdkafkaError
from confluent_kafka import Producer
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)
from pydantic import SecretStr
from typer.testing import CliRunner

from connectors.cli import app
from deploy.kafka.launcher import LauncherError, LocalBus, SecureListener
from deploy.kafka.tls import new_ca
from deploy.worker import start_worker
from streams.client.publisher import Publisher
from streams.contract.catalog import Catalog
from streams.contract.signing import load_private_key
from streams.registry import acls
from streams.registry.acls import AclBinding
from streams.registry.model import load_registry
from streams.settings import REPO_ROOT, KafkaSettings, SchemaRegistrySettings
from tests.unit.pipeline_fixtures import KEY_IDS, sample

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.slow]

EXAMPLE = REPO_ROOT / "deploy" / "registry.example.yaml"
USERS = ("nida", "rita", "ega", acls.WORKER_USER, acls.ADMIN_USER)
runner = CliRunner()


@dataclass
class SecureBus:
    """The module's secure bus, its users' passwords and what happened around the apply."""

    bus: LocalBus
    passwords: dict[str, str]
    admin: tuple[str, str]
    ca_file: Path
    nida_before_apply: BaseException | None = None
    first_apply: str = ""

    def settings(self, user: str, password: str | None = None) -> KafkaSettings:
        """How ``user`` connects (with its own password unless another is given)."""
        return KafkaSettings(
            bootstrap_servers=self.bus.secure_bootstrap,
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=user,
            sasl_password=SecretStr(password or self.passwords[user]),
            ssl_cafile=self.ca_file,
        )

    def apply(self, path: Path, user: str | None = None) -> str:
        """``govesb registry apply`` over SASL_SSL (as the super user by default); its output."""
        assert self.bus.broker is not None
        env = self.bus.broker.secure.client_env(
            *((user, self.passwords[user]) if user else self.admin)
        )
        result = runner.invoke(
            app,
            ["--bootstrap", self.bus.secure_bootstrap, "--schema-registry", self.bus.registry_url,
             "registry", "apply", str(path)],
            env=env,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return result.output

    def acls_of(self, user: str) -> set[AclBinding]:
        """The ACLs the broker holds for ``user`` (as the admin)."""
        return asyncio.run(_acls_of(self.settings(*self.admin), user))


async def _acls_of(admin: KafkaSettings, user: str) -> set[AclBinding]:
    return {acl for acl in await acls.cluster_acls(admin) if acl.principal == f"User:{user}"}


async def _produce(kafka: KafkaSettings, topic: str, value: bytes = b"probe") -> None:
    """One record to ``topic`` as ``kafka``'s user; raises what the broker answered."""
    producer = AIOKafkaProducer(**kafka.aiokafka_options(), acks="all", request_timeout_ms=10_000)
    await producer.start()
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, value, key=b"probe"), 30)
    finally:
        await producer.stop()


async def _consume(kafka: KafkaSettings, topic: str, group: str) -> list[bytes]:
    """Values of ``topic`` read through consumer group ``group`` until one arrives (or 30 s)."""
    consumer = AIOKafkaConsumer(
        topic,
        **kafka.aiokafka_options(),
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                values = [r.value for records in batches.values() for r in records]
                if values:
                    return values
    finally:
        await consumer.stop()


def _librdkafka_errors(config: dict[str, Any], wait_s: float = 20.0) -> list[LibrdkafkaError]:
    """Errors librdkafka reports while it tries to fetch metadata with ``config``."""
    errors: list[LibrdkafkaError] = []
    producer = Producer({**config, "error_cb": errors.append, "log_level": 0})
    deadline = time.monotonic() + wait_s
    while not errors and time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # it fails; the reason comes to error_cb
            producer.list_topics(timeout=0.5)
        producer.poll(0.1)
    return errors


def _example() -> Any:
    registry, problems = load_registry(EXAMPLE)
    assert problems == []
    return registry


def _without_ega_and_http_delivery(tmp_path: Path) -> Path:
    """The example registry without the institution ega and utumishi's HTTP agreement."""
    document = yaml.safe_load(EXAMPLE.read_text())
    document["catalog"] = str(REPO_ROOT / "schemas" / "catalog.yaml")
    document["institutions"] = [i for i in document["institutions"] if i["id"] != "ega"]
    document["subscriptions"] = [
        s for s in document["subscriptions"] if s.get("delivery") != "http"
    ]
    edited = tmp_path / "registry.yaml"
    edited.write_text(yaml.safe_dump(document))
    return edited


@pytest.fixture(scope="module")
def secure(test_environment: Any) -> Iterator[SecureBus]:
    """A secure bus with SCRAM users, registry applied; what nida could do before the apply."""
    bus = LocalBus(security=SecureListener())
    try:
        bus.start()
    except LauncherError as error:
        if test_environment.ci:
            pytest.fail(f"CI=true and the secure broker could not start: {error}", pytrace=False)
        pytest.skip(f"the secure broker could not start: {error}")
    try:
        assert bus.broker is not None
        passwords = {user: secrets.token_urlsafe(16) for user in USERS}
        for user, password in passwords.items():
            bus.broker.secure.add_scram_user(user, password)
        state = SecureBus(
            bus, passwords, bus.broker.secure.admin_credentials, bus.broker.secure.tls.ca_file
        )

        # Before any ACL: nida's own ingress topic exists, yet nida may not write it.
        admin = AdminClient({**bus.broker.secure.client_config(*state.admin), "log_level": 0})
        created = admin.create_topics([NewTopic("esb.ingress.nida", 6, 1)], operation_timeout=10)
        created["esb.ingress.nida"].result(timeout=15)
        try:
            asyncio.run(_produce(state.settings("nida"), "esb.ingress.nida"))
        except KafkaError as error:
            state.nida_before_apply = error

        registered = runner.invoke(
            app, ["--schema-registry", bus.registry_url, "schemas", "register"]
        )
        assert registered.exit_code == 0, registered.output
        state.first_apply = state.apply(EXAMPLE)
        yield state
    finally:
        bus.stop()


def test_before_apply_an_institution_may_not_even_write_its_own_topic(secure: SecureBus) -> None:
    assert isinstance(secure.nida_before_apply, TopicAuthorizationFailedError)
    expected = acls.acl_bindings(acls.bus_acls(_example()))
    assert f"ACLs: {len(expected)} created, 0 deleted, 0 unchanged" in secure.first_apply
    assert "+ acl User:nida ALLOW WRITE topic esb.ingress.nida" in secure.first_apply


async def test_an_institution_writes_its_ingress_topic_and_no_other(secure: SecureBus) -> None:
    nida = secure.settings("nida")
    await _produce(nida, "esb.ingress.nida")
    for topic in ("esb.ingress.rita", "esb.deliver.nida", "esb.audit", "esb.registry"):
        with pytest.raises(TopicAuthorizationFailedError):
            await _produce(nida, topic)


async def test_an_institution_reads_its_own_deliveries_and_rejections_only(
    secure: SecureBus,
) -> None:
    admin = secure.settings(*secure.admin)
    readable = ("esb.deliver.nida", "esb.rejected.nida")
    refused = ("esb.deliver.rita", "esb.rejected.rita", "esb.ingress.rita", "esb.audit")
    for topic in (*readable, *refused):
        await _produce(admin, topic, value=topic.encode())
    nida = secure.settings("nida")
    for topic in readable:
        assert topic.encode() in await _consume(nida, topic, f"nida.{uuid.uuid4().hex}")
    for topic in refused:
        with pytest.raises(TopicAuthorizationFailedError):
            await _consume(nida, topic, f"nida.{uuid.uuid4().hex}")
    # Its own topic, but through another institution's consumer group.
    with pytest.raises(GroupAuthorizationFailedError):
        await _consume(nida, "esb.deliver.nida", f"rita.{uuid.uuid4().hex}")


def test_a_wrong_password_is_refused_at_authentication(secure: SecureBus) -> None:
    assert secure.bus.broker is not None
    config = secure.bus.broker.secure.client_config("nida", "not-" + secure.passwords["nida"])
    errors = _librdkafka_errors(config)
    assert errors
    assert errors[0].code() == LibrdkafkaError._AUTHENTICATION, errors
    assert "invalid credentials" in errors[0].str(), errors
    # An unknown user too.
    unknown = _librdkafka_errors(secure.bus.broker.secure.client_config("mallory", "password"))
    assert unknown[0].code() == LibrdkafkaError._AUTHENTICATION, unknown


def test_without_tls_or_sasl_the_secure_port_answers_nothing(secure: SecureBus) -> None:
    assert secure.bus.broker is not None
    good = secure.bus.broker.secure.client_config("nida", secure.passwords["nida"])
    for protocol, drop in (("plaintext", ("sasl.", "ssl.")), ("sasl_plaintext", ("ssl.",))):
        config = {k: v for k, v in good.items() if not k.startswith(drop)}
        config["security.protocol"] = protocol
        errors = _librdkafka_errors(config)
        assert errors, protocol
        assert {e.code() for e in errors} <= {
            LibrdkafkaError._TRANSPORT,
            LibrdkafkaError._ALL_BROKERS_DOWN,
        }, errors


def test_a_broker_certificate_from_an_unknown_ca_is_refused(
    secure: SecureBus, tmp_path: Path
) -> None:
    assert secure.bus.broker is not None
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(new_ca("someone else's CA").pem)
    config = secure.bus.broker.secure.client_config("nida", secure.passwords["nida"])
    config["ssl.ca.location"] = str(other_ca)
    errors = _librdkafka_errors(config)
    assert errors
    assert "certificate verify failed" in errors[0].str(), errors
    assert "SSL_HANDSHAKE" in errors[0].str(), errors  # refused before any SASL exchange


def test_a_second_apply_changes_nothing_and_removed_principals_lose_their_acls(
    secure: SecureBus, tmp_path: Path
) -> None:
    nida_acls = secure.acls_of("nida")
    assert len(nida_acls) == 7
    again = secure.apply(EXAMPLE)
    assert "topics created: 0, records written: 0, removed: 0" in again
    assert "ACLs: 0 created, 0 deleted," in again

    sink = acls.sink_user("utumishi")
    assert secure.acls_of("ega")
    assert secure.acls_of(sink)
    asyncio.run(_produce(secure.settings("ega"), "esb.ingress.ega"))
    try:
        removed = secure.apply(_without_ega_and_http_delivery(tmp_path))
        assert "ACLs: 0 created, 28 deleted," in removed, removed
        assert secure.acls_of("ega") == set()
        assert secure.acls_of(sink) == set()
        assert not any("esb.ingress.ega" in acl.name for acl in secure.acls_of(acls.WORKER_USER))
        assert secure.acls_of("nida") == nida_acls
        with pytest.raises(TopicAuthorizationFailedError):
            asyncio.run(_produce(secure.settings("ega"), "esb.ingress.ega"))
    finally:
        restored = secure.apply(EXAMPLE)
    assert "ACLs: 28 created, 0 deleted," in restored, restored
    asyncio.run(_produce(secure.settings("ega"), "esb.ingress.ega"))


def test_apply_as_a_principal_that_may_not_manage_acls_leaves_them_alone(
    secure: SecureBus,
) -> None:
    """govesb-admin, as Strimzi's setup Job runs apply: records yes, ACLs left to Strimzi."""
    before = asyncio.run(acls.cluster_acls(secure.settings(*secure.admin)))
    output = secure.apply(EXAMPLE, user=acls.ADMIN_USER)
    assert "records written: 0" in output
    assert "ACLs: this principal may not describe the cluster's ACLs" in output, output
    assert asyncio.run(acls.cluster_acls(secure.settings(*secure.admin))) == before


def test_a_cluster_without_an_authorizer_is_applied_without_acls(
    cli_options: list[str], applied_registry: Path
) -> None:
    # applied_registry: the catalogue's schemas are registered, as apply now requires.
    result = runner.invoke(app, [*cli_options, "registry", "apply", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "ACLs: not enforced by this cluster (no authorizer), skipped" in result.output


async def test_the_worker_delivers_end_to_end_as_govesb_worker(
    secure: SecureBus, tmp_path: Path
) -> None:
    """rita publishes, the worker (User:govesb-worker) delivers, nida reads: all over TLS."""
    assert secure.bus.broker is not None
    worker_env = secure.bus.broker.secure.client_env(
        acls.WORKER_USER, secure.passwords[acls.WORKER_USER]
    )
    worker = await asyncio.to_thread(
        start_worker,
        secure.bus.secure_bootstrap,
        secure.bus.registry_url,
        tmp_path / "worker.log",
        extra_env={**worker_env, "GOVESB_COMMIT_INTERVAL_S": "0.5"},
    )
    try:
        catalog = Catalog.load()
        birth = sample(
            "tz.go.rita.BirthRegistered", entryNumber=f"2026{uuid.uuid4().int % 10**6:06d}"
        )
        async with Publisher.connect(
            institution="rita",
            system="crvs",
            key_id=KEY_IDS["rita"],
            key=load_private_key((REPO_ROOT / "deploy/demo-keys/rita.key.pem").read_text()),
            kafka=secure.settings("rita"),
            schema_registry=SchemaRegistrySettings(url=secure.bus.registry_url),
            catalog=catalog,
        ) as rita:
            event_id = await rita.publish("tz.go.rita.BirthRegistered", birth)

        consumer = AIOKafkaConsumer(
            "esb.deliver.nida",
            **secure.settings("nida").aiokafka_options(),
            group_id=f"nida.{uuid.uuid4().hex}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            async with asyncio.timeout(60):
                delivered = None
                while delivered is None:
                    batches = await consumer.getmany(timeout_ms=500)
                    delivered = next(
                        (
                            r
                            for records in batches.values()
                            for r in records
                            if dict(r.headers or []).get("ce_id") == event_id.encode()
                        ),
                        None,
                    )
        finally:
            await consumer.stop()
        headers = dict(delivered.headers)
        assert headers["esb_subscription"] == b"nida-births"
        assert headers["ce_sigkeyid"].startswith(b"ega-")
        assert worker.process.poll() is None
    finally:
        code, _ = await asyncio.to_thread(worker.stop)
    log = (tmp_path / "worker.log").read_text()
    assert code == 0, log[-3000:]
    assert "AuthorizationFailed" not in log, log[-3000:]  # it needed no more than its ACLs


async def test_a_delivery_topic_the_worker_may_not_write_gets_undeliverable_rejections(
    secure: SecureBus, tmp_path: Path
) -> None:
    """The worker's Write ACL on esb.deliver.utumishi is taken away while it runs: each death
    still reaches nida, and comes back to rita as ``undeliverable`` for utumishi."""
    assert secure.bus.broker is not None
    worker_env = secure.bus.broker.secure.client_env(
        acls.WORKER_USER, secure.passwords[acls.WORKER_USER]
    )
    worker = await asyncio.to_thread(
        start_worker,
        secure.bus.secure_bootstrap,
        secure.bus.registry_url,
        tmp_path / "worker.log",
        extra_env={**worker_env, "GOVESB_COMMIT_INTERVAL_S": "0.5"},
    )
    admin = AdminClient({**secure.bus.broker.secure.client_config(*secure.admin), "log_level": 0})
    denied = AclBindingFilter(
        ResourceType.TOPIC, "esb.deliver.utumishi", ResourcePatternType.LITERAL,
        acls.principal(acls.WORKER_USER), "*", AclOperation.WRITE, AclPermissionType.ALLOW,
    )  # fmt: skip
    try:
        for future in admin.delete_acls([denied]).values():
            assert future.result(timeout=15), "the worker had no Write ACL to take away"
        system = f"acl-{uuid.uuid4().hex[:6]}"
        source = f"/institutions/rita/systems/{system}".encode()
        async with Publisher.connect(
            institution="rita",
            system=system,
            key_id=KEY_IDS["rita"],
            key=load_private_key((REPO_ROOT / "deploy/demo-keys/rita.key.pem").read_text()),
            kafka=secure.settings("rita"),
            schema_registry=SchemaRegistrySettings(url=secure.bus.registry_url),
            catalog=Catalog.load(),
        ) as rita:
            sent = {
                await rita.publish(
                    "tz.go.rita.DeathRegistered",
                    sample("tz.go.rita.DeathRegistered", entryNumber=f"ACL{n:05d}"),
                )
                for n in range(4)
            }
        delivered = await _records_of(secure.settings("nida"), "esb.deliver.nida", source, sent)
        rejected = await _records_of(secure.settings("rita"), "esb.rejected.rita", source, sent)
        health = worker.health()
    finally:
        await asyncio.to_thread(worker.stop)
        await asyncio.to_thread(secure.apply, EXAMPLE)  # gives the worker its ACL back

    assert set(delivered) == sent  # the other agreement holds
    assert set(rejected) == sent
    for headers in rejected.values():
        assert headers["esb_reason"] == b"undeliverable"
        assert headers["esb_refused_topic"] == b"esb.deliver.utumishi"
        assert b"TopicAuthorizationFailedError" in headers["esb_detail"]
    assert health is not None
    assert health["status"] == "ok", health


async def _records_of(
    kafka: KafkaSettings, topic: str, source: bytes, want: set[str]
) -> dict[str, dict[str, bytes]]:
    """Headers by ``ce_id`` of ``topic``'s records from ``source``, until all of ``want``
    were read (or 90 s)."""
    consumer = AIOKafkaConsumer(
        topic,
        **kafka.aiokafka_options(),
        group_id=f"{kafka.sasl_username}.{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: dict[str, dict[str, bytes]] = {}
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(90):
                while not want <= set(found):
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        for record in records:
                            headers = dict(record.headers or [])
                            if headers.get("ce_source") == source:
                                found[headers["ce_id"].decode()] = headers
    finally:
        await consumer.stop()
    return found
