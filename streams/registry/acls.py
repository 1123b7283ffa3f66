"""Who may do what on the bus: the Kafka ACLs the registry implies, and setting them.

One model, two outputs. ``govesb registry export --strimzi`` renders it as the ACL lists of
Strimzi ``KafkaUser`` resources; ``govesb registry apply`` sets it on a cluster that has an
authorizer (StandardAuthorizer on KRaft) through the Admin API. Each principal is allowed only
what its code does:

- an institution (``User:<id>``) writes its ``esb.ingress.<id>``, reads its
  ``esb.deliver.<id>`` and ``esb.rejected.<id>``, and reads through consumer groups named
  ``<id>.<anything>`` (the dot cannot occur in an institution id, so no institution can use
  another's groups);
- the pipeline worker reads every ingress topic (consumer group: its ``app_id``) and
  ``esb.registry``, and writes every deliver and rejected topic and ``esb.audit``;
- the gateway writes every ingress topic and reads ``esb.registry``;
- the HTTP sink of a subscriber reads its ``esb.deliver.<id>`` (group ``govesb-sink-<id>``)
  and ``esb.registry``, and writes its ``esb.dlq.<id>`` and ``esb.audit``;
- the operators' commands (``govesb audit verify``, ``govesb dlq list|replay``) read
  ``esb.audit`` and every dead-letter topic and write deliver topics (replay);
- ``govesb registry apply`` as ``govesb-admin`` describes the ``esb.`` topics and reads and
  writes ``esb.registry`` (where Strimzi's Topic Operator creates the topics; an apply that
  also creates topics and ACLs needs a principal allowed to, e.g. a super user).

Idempotent producers need no cluster ACL: since Kafka 3.0 a Write ACL on a topic suffices.

Apply owns every ACL of the principals it manages: the bus's ``User:govesb-*`` and the
institutions in the registry now or before this apply. ACLs of those principals that the
registry does not imply are deleted, as Strimzi's User Operator does for a ``KafkaUser``; other
principals' ACLs (operators', super users') are left alone.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka import errors
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.admin import DescribeAclsRequest
from confluent_kafka.admin import AdminClient

# The ACL types are public (confluent_kafka.admin) but re-exported without `__all__`.
from confluent_kafka.admin._acl import AclBinding as KafkaAcl
from confluent_kafka.admin._acl import AclBindingFilter, AclOperation, AclPermissionType
from confluent_kafka.admin._resource import ResourcePatternType, ResourceType

from streams.contract import topics
from streams.contract.catalog import Problem
from streams.registry.model import BusRegistry
from streams.settings import KafkaSettings, WorkerSettings

BUS_USER_PREFIX = "govesb-"
WORKER_USER = "govesb-worker"
GATEWAY_USER = "govesb-gateway"
OPERATOR_USER = "govesb-operator"
ADMIN_USER = "govesb-admin"
DEFAULT_WORKER_GROUP = str(WorkerSettings.model_fields["app_id"].default)
ANY_HOST = "*"
SETTLE_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class AclRule:
    """Operations allowed on one resource: one entry of a Strimzi ``KafkaUser``'s ACL list.

    Operations are named as Strimzi names them (``Read``, ``Write``, ``Describe``, …).
    """

    resource_type: Literal["topic", "group"]
    name: str
    operations: tuple[str, ...]
    prefix: bool = False


@dataclass(frozen=True, order=True)
class AclBinding:
    """One Kafka ACL, in the Admin API's terms (``TOPIC``, ``PREFIXED``, ``READ``, …)."""

    principal: str
    resource_type: str
    name: str
    pattern: str
    operation: str
    permission: str = "ALLOW"
    host: str = ANY_HOST

    def __str__(self) -> str:
        pattern = "*" if self.pattern == "PREFIXED" else ""
        where = "" if self.host == ANY_HOST else f" from {self.host}"
        return (
            f"{self.principal} {self.permission} {self.operation} "
            f"{self.resource_type.lower()} {self.name}{pattern}{where}"
        )


def provider_user(provider: str) -> str:
    """The Kafka user of ``provider``'s HTTP provider connector."""
    return f"{BUS_USER_PREFIX}provider-{provider}"


def http_providers(registry: BusRegistry) -> list[str]:
    """Institutions serving an API over HTTP: each runs a provider connector."""
    return sorted(
        {registry.catalog.services[s.api_code].provider
         for s in registry.document.services if s.served_by == "http"}
    )  # fmt: skip


def sink_user(subscriber: str) -> str:
    """The Kafka user of ``subscriber``'s HTTP sink."""
    return f"{BUS_USER_PREFIX}sink-{subscriber}"


def principal(user: str) -> str:
    """The Kafka principal a SCRAM user authenticates as."""
    return f"User:{user}"


def http_subscribers(registry: BusRegistry) -> list[str]:
    """Institutions with at least one agreement delivered over HTTP: each runs an HTTP sink."""
    return sorted({s.subscriber for s in registry.document.subscriptions if s.delivery == "http"})


def principal_problems(registry: BusRegistry) -> list[Problem]:
    """What makes a linted registry's users ambiguous: an institution id taken by a bus user."""
    return [
        Problem(
            path=f"institutions[{index}].id",
            message=f"{institution.id!r}: ids starting with {BUS_USER_PREFIX!r} are the bus's "
            "own Kafka users",
        )
        for index, institution in enumerate(registry.document.institutions)
        if institution.id.startswith(BUS_USER_PREFIX)
    ]


def _read(topic: str) -> AclRule:
    return AclRule("topic", topic, ("Read", "Describe"))


def _write(topic: str) -> AclRule:
    return AclRule("topic", topic, ("Write", "Describe"))


def institution_acls(institution: str) -> list[AclRule]:
    """What an institution's own systems may do on the bus."""
    return [
        _write(topics.ingress(institution)),
        _read(topics.deliver(institution)),
        _read(topics.rejected(institution)),
        AclRule("group", f"{institution}.", ("Read",), prefix=True),
    ]


def bus_acls(
    registry: BusRegistry, *, worker_group: str = DEFAULT_WORKER_GROUP
) -> dict[str, list[AclRule]]:
    """Every Kafka user of the bus and its ACLs: institutions first, then the bus's processes."""
    from streams.registry.sync import providers, requesters  # sync imports this module

    ids = [institution.id for institution in registry.document.institutions]
    serving, asking = providers(registry), requesters(registry)
    users = {i: institution_acls(i) for i in ids}
    kafka_native = {registry.catalog.services[s.api_code].provider
                    for s in registry.document.services if s.served_by == "kafka"}  # fmt: skip
    for provider in sorted(kafka_native):  # a Kafka-native provider reads its requests
        users[provider].append(_read(topics.request(provider)))
    for requester in asking:
        users[requester].append(_read(topics.reply(requester)))
    users[WORKER_USER] = [
        *(_read(topics.ingress(i)) for i in ids),
        AclRule("group", worker_group, ("Read",)),
        _read(topics.REGISTRY),
        *(_write(topics.deliver(i)) for i in ids),
        *(_write(topics.rejected(i)) for i in ids),
        _write(topics.AUDIT),
        _read(topics.DUPLICATES),
        _write(topics.DUPLICATES),
        *(_write(topics.request(p)) for p in serving),
        *(_write(topics.reply(r)) for r in asking),
        _write(topics.TICKETS),
        # max.message.bytes of its output topics: a record the broker refused only as part of
        # a too-large batch is sent again alone when it fits (streams.pipeline.writer).
        AclRule("topic", "esb.deliver.", ("DescribeConfigs",), prefix=True),
        AclRule("topic", "esb.rejected.", ("DescribeConfigs",), prefix=True),
    ]
    users[GATEWAY_USER] = [
        *(_write(topics.ingress(i)) for i in ids),
        _read(topics.REGISTRY),
        *(_read(topics.reply(r)) for r in asking),  # the answers to the calls it holds
        _read(topics.TICKETS),  # late answers (/engine/esb/async)
        _write(topics.AUDIT),  # the calls it answered timed-out
    ]
    for provider in http_providers(registry):
        users[provider_user(provider)] = [
            _read(topics.request(provider)),
            AclRule("group", topics.provider_group(provider), ("Read",)),
            _read(topics.REGISTRY),
            _write(topics.ingress(provider)),
            _write(topics.AUDIT),
        ]
    for subscriber in http_subscribers(registry):
        users[sink_user(subscriber)] = [
            _read(topics.deliver(subscriber)),
            AclRule("group", topics.sink_group(subscriber), ("Read",)),
            _read(topics.REGISTRY),
            _write(topics.dlq(subscriber)),
            _write(topics.AUDIT),
            # late answers to its own requests are pushed to its endpoint too
            *([_read(topics.reply(subscriber))] if subscriber in asking else []),
        ]
    users[OPERATOR_USER] = [
        _read(topics.AUDIT),
        *(_read(topics.dlq(i)) for i in ids),
        *(_write(topics.deliver(i)) for i in ids),
    ]
    users[ADMIN_USER] = [
        AclRule("topic", "esb.", ("Describe",), prefix=True),
        AclRule("topic", topics.REGISTRY, ("Read", "Write", "Describe")),
    ]
    return users


def _kafka_name(operation: str) -> str:
    """``IdempotentWrite`` (Strimzi) -> ``IDEMPOTENT_WRITE`` (Kafka)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).upper()


def acl_bindings(users: Mapping[str, Sequence[AclRule]]) -> set[AclBinding]:
    """The Kafka ACLs of ``users``: one ALLOW binding per operation, from any host."""
    return {
        AclBinding(
            principal=principal(user),
            resource_type=rule.resource_type.upper(),
            name=rule.name,
            pattern="PREFIXED" if rule.prefix else "LITERAL",
            operation=_kafka_name(operation),
        )
        for user, rules in users.items()
        for rule in rules
        for operation in rule.operations
    }


def is_managed(acl_principal: str, institutions: Iterable[str]) -> bool:
    """Whether apply owns the ACLs of ``acl_principal``: a bus user or one of ``institutions``."""
    kind, _, user = acl_principal.partition(":")
    return kind == "User" and (user.startswith(BUS_USER_PREFIX) or user in set(institutions))


@dataclass
class AclPlan:
    """ACLs to create and to delete so that the managed principals have exactly the desired."""

    create: list[AclBinding]
    delete: list[AclBinding]
    kept: int


def plan_acls(
    desired: set[AclBinding], existing: Iterable[AclBinding], institutions: Iterable[str]
) -> AclPlan:
    """Compare the cluster's ACLs with the desired ones; only managed principals are touched.

    Args:
        desired: what the registry implies (:func:`acl_bindings` of :func:`bus_acls`).
        existing: every ACL the cluster holds.
        institutions: institutions in the registry now or before this apply (the principals
            of ``desired`` are managed in any case).
    """
    known = set(institutions)
    desired_principals = {acl.principal for acl in desired}
    managed = {
        acl
        for acl in existing
        if acl.principal in desired_principals or is_managed(acl.principal, known)
    }
    return AclPlan(
        create=sorted(desired - managed),
        delete=sorted(managed - desired),
        kept=len(desired & managed),
    )


# ------------------------------------------------------------------------- on a cluster
#
# Listing goes through aiokafka: confluent-kafka 2.16's describe_acls drops the response's
# error code (a cluster without an authorizer answers SECURITY_DISABLED; it returns []), and
# apply must tell "no ACLs" from "ACLs not enforced". Creating and deleting go through
# confluent-kafka, which sends all of them in one request and reports each one's error.

# Codes of the Kafka protocol (org.apache.kafka.common.resource, org.apache.kafka.common.acl)
# for what the admin client can express; ACLs on other resources (users, delegation tokens)
# are never touched.
_RESOURCE_TYPES = {2: "TOPIC", 3: "GROUP", 4: "CLUSTER", 5: "TRANSACTIONAL_ID"}
_PATTERN_TYPES = {3: "LITERAL", 4: "PREFIXED"}
_OPERATIONS = {
    2: "ALL", 3: "READ", 4: "WRITE", 5: "CREATE", 6: "DELETE", 7: "ALTER", 8: "DESCRIBE",
    9: "CLUSTER_ACTION", 10: "DESCRIBE_CONFIGS", 11: "ALTER_CONFIGS", 12: "IDEMPOTENT_WRITE",
}  # fmt: skip
_PERMISSIONS = {2: "DENY", 3: "ALLOW"}
_MATCH_ANY = 1
_SECURITY_DISABLED = 54
_CLUSTER_AUTHORIZATION_FAILED = 31


@dataclass
class AclReport:
    """What :func:`sync_acls` did; ``skipped`` says why nothing was done, when so."""

    created: list[AclBinding] = field(default_factory=list)
    deleted: list[AclBinding] = field(default_factory=list)
    kept: int = 0
    skipped: str | None = None


class AclsUnavailableError(Exception):
    """The cluster cannot list ACLs for this principal: no authorizer, or not allowed."""


async def cluster_acls(kafka: KafkaSettings) -> set[AclBinding]:
    """Every ACL the cluster holds (the principal needs Describe on the cluster).

    Raises:
        AclsUnavailableError: no authorizer, or this principal may not describe ACLs.
        KafkaError: any other error the broker answered (aiokafka's exception for it).
    """
    client = AIOKafkaClient(**kafka.aiokafka_options())
    await client.bootstrap()
    try:
        response = await client.send(
            client.get_random_node(),
            DescribeAclsRequest(
                resource_type=_MATCH_ANY,
                resource_name=None,
                resource_pattern_type_filter=_MATCH_ANY,
                principal=None,
                host=None,
                operation=_MATCH_ANY,
                permission_type=_MATCH_ANY,
            ),
        )
    finally:
        await client.close()
    if response.error_code == _SECURITY_DISABLED:
        raise AclsUnavailableError("not enforced by this cluster (no authorizer)")
    if response.error_code == _CLUSTER_AUTHORIZATION_FAILED:
        raise AclsUnavailableError(
            "this principal may not describe the cluster's ACLs (are they kept by another tool, "
            "such as Strimzi's User Operator?)"
        )
    if response.error_code:
        raise errors.for_code(response.error_code)(response.error_message)
    found: set[AclBinding] = set()
    for resource_type, name, pattern, entries in response.resources:
        for acl_principal, host, operation, permission in entries:
            try:
                found.add(
                    AclBinding(
                        principal=acl_principal,
                        resource_type=_RESOURCE_TYPES[resource_type],
                        name=name,
                        pattern=_PATTERN_TYPES[pattern],
                        operation=_OPERATIONS[operation],
                        permission=_PERMISSIONS[permission],
                        host=host,
                    )
                )
            except KeyError:
                continue  # a resource or operation this module never sets
    return found


def admin_config(kafka: KafkaSettings) -> dict[str, Any]:
    """librdkafka configuration of an admin client with ``kafka``'s TLS and SASL settings."""
    # errors only: failed requests are reported by their futures
    return {**kafka.librdkafka_options(), "log_level": 3}


def _to_kafka(acl: AclBinding) -> KafkaAcl:
    return KafkaAcl(
        ResourceType.BROKER if acl.resource_type == "CLUSTER" else ResourceType[acl.resource_type],
        acl.name,
        ResourcePatternType[acl.pattern],
        acl.principal,
        acl.host,
        AclOperation[acl.operation],
        AclPermissionType[acl.permission],
    )


def _filter_of(acl: AclBinding) -> AclBindingFilter:
    """A filter matching exactly ``acl``."""
    exact = _to_kafka(acl)
    return AclBindingFilter(
        exact.restype,
        exact.name,
        exact.resource_pattern_type,
        exact.principal,
        exact.host,
        exact.operation,
        exact.permission_type,
    )


async def _all_done(futures: Iterable[Any]) -> None:
    await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))


async def sync_acls(
    kafka: KafkaSettings, desired: set[AclBinding], institutions: Iterable[str]
) -> AclReport:
    """Make the managed principals' ACLs on the cluster exactly ``desired``.

    Returns once the broker answering reports the new set (its authorizer enforces it), or
    raises (``KafkaException`` of confluent-kafka, aiokafka's ``KafkaError``,
    ``TimeoutError``). A cluster without an authorizer, or a principal not allowed to describe
    ACLs, is reported in ``skipped`` and nothing is changed.
    """
    known = set(institutions)
    try:
        existing = await cluster_acls(kafka)
    except AclsUnavailableError as reason:
        return AclReport(skipped=str(reason))
    plan = plan_acls(desired, existing, known)
    client = AdminClient(admin_config(kafka))
    if plan.delete:
        filters = [_filter_of(acl) for acl in plan.delete]
        await _all_done(client.delete_acls(filters, request_timeout=REQUEST_TIMEOUT_S).values())
    if plan.create:
        bindings = [_to_kafka(acl) for acl in plan.create]
        await _all_done(client.create_acls(bindings, request_timeout=REQUEST_TIMEOUT_S).values())
    deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT_S
    while plan.create or plan.delete:  # until the broker's authorizer has them
        settled = plan_acls(desired, await cluster_acls(kafka), known)
        if not settled.create and not settled.delete:
            break
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(
                f"the broker did not report the new ACLs within {SETTLE_TIMEOUT_S:.0f}s "
                f"({len(settled.create)} missing, {len(settled.delete)} not yet deleted)"
            )
        await asyncio.sleep(0.2)
    return AclReport(created=plan.create, deleted=plan.delete, kept=plan.kept)
