"""Strimzi resources for a registry: ``govesb registry export --strimzi``.

On Kubernetes the Strimzi Topic and User Operators own the bus's topics and its Kafka users:
one ``KafkaTopic`` per topic that ``govesb registry apply`` would create (same names,
partitions and configuration, from ``registry_sync.desired_topics``), and one ``KafkaUser``
(SCRAM-SHA-512, simple authorization) per institution and per bus process, each allowed only
what it needs:

- an institution writes its ``esb.ingress.<id>``, reads its ``esb.deliver.<id>`` and
  ``esb.rejected.<id>``, and reads through consumer groups named ``<id>.<anything>`` (the dot
  cannot occur in an institution id, so no institution can use another's groups);
- the pipeline worker reads every ingress topic (consumer group: its ``app_id``) and
  ``esb.registry``, and writes every deliver and rejected topic and ``esb.audit``;
- the gateway writes every ingress topic and reads ``esb.registry``;
- the HTTP sink of a subscriber reads its ``esb.deliver.<id>`` (group ``govesb-sink-<id>``)
  and ``esb.registry``, and writes its ``esb.dlq.<id>`` and ``esb.audit``;
- the operators' commands (``govesb audit verify``, ``govesb dlq list|replay``) read
  ``esb.audit`` and every dead-letter topic and write deliver topics (replay);
- ``govesb registry apply`` (the admin user) describes the ``esb.`` topics and reads and writes
  ``esb.registry``; it creates no topic, as the Topic Operator does that.

Idempotent producers need no cluster ACL: since Kafka 3.0 a Write ACL on a topic suffices.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from streams import topics
from streams.catalog import Problem
from streams.registry_model import BusRegistry
from streams.registry_sync import desired_topics, replication_factor
from streams.settings import TopicSettings, WorkerSettings

API_VERSION = "kafka.strimzi.io/v1beta2"
BUS_USER_PREFIX = "govesb-"
WORKER_USER = "govesb-worker"
GATEWAY_USER = "govesb-gateway"
OPERATOR_USER = "govesb-operator"
ADMIN_USER = "govesb-admin"
FILE_NAMES = {"KafkaTopic": "kafka-topics.yaml", "KafkaUser": "kafka-users.yaml"}
DEFAULT_BROKERS = 3
_WORKER_GROUP = str(WorkerSettings.model_fields["app_id"].default)

Resource = dict[str, Any]


def sink_user(subscriber: str) -> str:
    """The Kafka user of ``subscriber``'s HTTP sink."""
    return f"{BUS_USER_PREFIX}sink-{subscriber}"


def http_subscribers(registry: BusRegistry) -> list[str]:
    """Institutions with at least one agreement delivered over HTTP: each runs an HTTP sink."""
    return sorted({s.subscriber for s in registry.document.subscriptions if s.delivery == "http"})


def export_problems(registry: BusRegistry) -> list[Problem]:
    """What makes a linted registry unexportable: an institution id taken by a bus user."""
    return [
        Problem(
            path=f"institutions[{index}].id",
            message=f"{institution.id!r}: ids starting with {BUS_USER_PREFIX!r} are the bus's "
            "own Kafka users",
        )
        for index, institution in enumerate(registry.document.institutions)
        if institution.id.startswith(BUS_USER_PREFIX)
    ]


def _metadata(name: str, cluster: str, namespace: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = {"strimzi.io/cluster": cluster, "app.kubernetes.io/part-of": "govesb"}
    return metadata


def _acl(kind: str, name: str, operations: Iterable[str], *, prefix: bool = False) -> Resource:
    return {
        "resource": {"type": kind, "name": name, "patternType": "prefix" if prefix else "literal"},
        "operations": list(operations),
    }


def _read(topic: str) -> Resource:
    return _acl("topic", topic, ["Read", "Describe"])


def _write(topic: str) -> Resource:
    return _acl("topic", topic, ["Write", "Describe"])


def _user(name: str, acls: list[Resource], cluster: str, namespace: str | None) -> Resource:
    return {
        "apiVersion": API_VERSION,
        "kind": "KafkaUser",
        "metadata": _metadata(name, cluster, namespace),
        "spec": {
            "authentication": {"type": "scram-sha-512"},
            "authorization": {"type": "simple", "acls": acls},
        },
    }


def institution_acls(institution: str) -> list[Resource]:
    """What an institution's own systems may do on the bus."""
    return [
        _write(topics.ingress(institution)),
        _read(topics.deliver(institution)),
        _read(topics.rejected(institution)),
        _acl("group", f"{institution}.", ["Read"], prefix=True),
    ]


def kafka_topics(
    registry: BusRegistry,
    settings: TopicSettings,
    *,
    cluster: str,
    namespace: str | None = None,
    brokers: int = DEFAULT_BROKERS,
) -> list[Resource]:
    """One ``KafkaTopic`` per topic ``govesb registry apply`` would create, in its order."""
    replicas = replication_factor(settings, brokers)
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "KafkaTopic",
            "metadata": _metadata(spec.name, cluster, namespace),
            "spec": {
                "topicName": spec.name,
                "partitions": spec.partitions,
                "replicas": replicas,
                "config": dict(sorted(spec.config.items())),
            },
        }
        for spec in desired_topics(registry, settings)
    ]


def kafka_users(
    registry: BusRegistry,
    *,
    cluster: str,
    namespace: str | None = None,
    worker_group: str = _WORKER_GROUP,
) -> list[Resource]:
    """One ``KafkaUser`` per institution, then the bus's own processes."""
    ids = [institution.id for institution in registry.document.institutions]
    users = [_user(i, institution_acls(i), cluster, namespace) for i in ids]
    worker = [
        *(_read(topics.ingress(i)) for i in ids),
        _acl("group", worker_group, ["Read"]),
        _read(topics.REGISTRY),
        *(_write(topics.deliver(i)) for i in ids),
        *(_write(topics.rejected(i)) for i in ids),
        _write(topics.AUDIT),
    ]
    gateway = [*(_write(topics.ingress(i)) for i in ids), _read(topics.REGISTRY)]
    operator = [
        _read(topics.AUDIT),
        *(_read(topics.dlq(i)) for i in ids),
        *(_write(topics.deliver(i)) for i in ids),
    ]
    admin = [
        _acl("topic", "esb.", ["Describe"], prefix=True),
        _acl("topic", topics.REGISTRY, ["Read", "Write", "Describe"]),
    ]
    users += [
        _user(WORKER_USER, worker, cluster, namespace),
        _user(GATEWAY_USER, gateway, cluster, namespace),
    ]
    for subscriber in http_subscribers(registry):
        sink = [
            _read(topics.deliver(subscriber)),
            _acl("group", topics.sink_group(subscriber), ["Read"]),
            _read(topics.REGISTRY),
            _write(topics.dlq(subscriber)),
            _write(topics.AUDIT),
        ]
        users.append(_user(sink_user(subscriber), sink, cluster, namespace))
    users += [
        _user(OPERATOR_USER, operator, cluster, namespace),
        _user(ADMIN_USER, admin, cluster, namespace),
    ]
    return users


def strimzi_resources(
    registry: BusRegistry,
    settings: TopicSettings,
    *,
    cluster: str,
    namespace: str | None = None,
    brokers: int = DEFAULT_BROKERS,
) -> list[Resource]:
    """Every ``KafkaTopic`` and ``KafkaUser`` of ``registry``."""
    return [
        *kafka_topics(registry, settings, cluster=cluster, namespace=namespace, brokers=brokers),
        *kafka_users(registry, cluster=cluster, namespace=namespace),
    ]


def header(source: str, cluster: str) -> str:
    """The comment that opens every exported file."""
    return (
        f"# Generated by `govesb registry export --strimzi --cluster {cluster}` from {source}.\n"
        "# Do not edit: change the registry and export again. Institutions consume through\n"
        "# groups named `<institution>.<anything>`; the bus's processes log in as govesb-*.\n"
    )


def to_yaml(resources: list[Resource], source: str, cluster: str) -> str:
    """A multi-document YAML of ``resources`` under the generated-file header."""
    documents = [yaml.safe_dump(r, sort_keys=False, default_flow_style=False) for r in resources]
    return header(source, cluster) + "".join(f"---\n{d}" for d in documents)


def files_by_kind(resources: list[Resource], source: str, cluster: str) -> dict[str, str]:
    """One YAML file per kind: file name to content."""
    return {
        name: to_yaml([r for r in resources if r["kind"] == kind], source, cluster)
        for kind, name in FILE_NAMES.items()
        if any(r["kind"] == kind for r in resources)
    }
