"""The bus's topics, named and configured in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.settings import TopicSettings

REGISTRY = "esb.registry"
AUDIT = "esb.audit"
DUPLICATES = "esb.duplicates"
TICKETS = "esb.tickets"
_DAY_MS = 24 * 60 * 60 * 1000


def ingress(institution: str) -> str:
    """Where ``institution`` publishes (many event types)."""
    return f"esb.ingress.{institution}"


def rejected(institution: str) -> str:
    """Where the pipeline returns ``institution``'s rejected records, with reasons."""
    return f"esb.rejected.{institution}"


def deliver(institution: str) -> str:
    """What ``institution`` receives under its agreements."""
    return f"esb.deliver.{institution}"


def dlq(institution: str) -> str:
    """Deliveries to ``institution``'s HTTP endpoint that failed after every retry."""
    return f"esb.dlq.{institution}"


def request(provider: str) -> str:
    """The requests routed to ``provider``'s services, re-signed by the bus with a reply
    ticket each."""
    return f"esb.request.{provider}"


def reply(requester: str) -> str:
    """The answers to ``requester``'s requests (and the bus's refusals of them)."""
    return f"esb.reply.{requester}"


def provider_group(provider: str) -> str:
    """The consumer group of ``provider``'s HTTP provider connector."""
    return f"govesb-provider-{provider}"


def sink_group(subscriber: str) -> str:
    """The consumer group of ``subscriber``'s HTTP sink."""
    return f"govesb-sink-{subscriber}"


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: name, partitions and topic-level configuration."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def institution_topics(institution: str, settings: TopicSettings) -> list[TopicSpec]:
    """The four topics every institution has."""
    keep = str(settings.retention_days * _DAY_MS)
    keep_long = str(settings.rejected_retention_days * _DAY_MS)
    return [
        TopicSpec(ingress(institution), settings.ingress_partitions, {"retention.ms": keep}),
        TopicSpec(deliver(institution), settings.deliver_partitions, {"retention.ms": keep}),
        TopicSpec(rejected(institution), settings.rejected_partitions, {"retention.ms": keep_long}),
        TopicSpec(dlq(institution), settings.dlq_partitions, {"retention.ms": keep_long}),
    ]


def service_topics(
    providers: list[str], requesters: list[str], settings: TopicSettings
) -> list[TopicSpec]:
    """``esb.request.<provider>`` for every institution serving an API, ``esb.reply.<id>`` for
    every institution granted one."""
    keep = str(settings.retention_days * _DAY_MS)
    return [
        *(TopicSpec(request(p), settings.ingress_partitions, {"retention.ms": keep})
          for p in providers),
        *(TopicSpec(reply(r), settings.deliver_partitions, {"retention.ms": keep})
          for r in requesters),
    ]  # fmt: skip


def shared_topics(settings: TopicSettings) -> list[TopicSpec]:
    """The audit log (kept forever), the compacted registry of institutions and the events the
    duplicate window accepted (kept a little longer than the window)."""
    return [
        TopicSpec(AUDIT, settings.audit_partitions, {"retention.ms": "-1"}),
        TopicSpec(
            DUPLICATES,
            1,  # every worker reads all of it
            {"retention.ms": str(settings.duplicates_retention_hours * 3600 * 1000)},
        ),
        TopicSpec(
            TICKETS,  # the reply tickets of services that take late answers, for the gateway
            1,
            {"cleanup.policy": "compact,delete", "retention.ms": str(7 * _DAY_MS)},
        ),
        TopicSpec(
            REGISTRY,
            1,  # one partition: every process reads the whole registry in order
            {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "retention.ms": "-1"},
        ),
    ]
