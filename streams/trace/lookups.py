"""Every data-tracker lookup as its own record kind (``outcome: lookup``) in ``esb.audit``.

The record names who asked (``operator:<name>`` or ``institution:<id>``, in ``publisher``),
the business key's keyed hash (``subject``, never the clear key) and the answer
(``reason``: ``allowed found=<n>`` or ``refused``). It is hash-chained like every audit
record, acknowledged by every in-sync replica before the lookup is answered, and indexed
like the others, so lookups can themselves be looked up.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaProducer

from streams.audit.chain import AuditChain, new_chain
from streams.contract import topics
from streams.settings import KafkaSettings
from streams.trace.entries import LOOKUP

log = logging.getLogger(__name__)


class AuditLookupRecorder:
    """A :class:`~streams.trace.queries.LookupRecorder` writing to the audit topic."""

    def __init__(
        self, producer: AIOKafkaProducer, chain: AuditChain, topic: str = topics.AUDIT
    ) -> None:
        self.producer = producer
        self.chain = chain
        self.topic = topic

    @classmethod
    async def connect(cls, kafka: KafkaSettings, topic: str = topics.AUDIT) -> AuditLookupRecorder:
        """A recorder with its own durable producer and chain (``close`` stops it)."""
        producer = AIOKafkaProducer(**kafka.durable_producer_options())
        await producer.start()
        return cls(producer, new_chain("tracker"), topic)

    async def record(self, asker: str, subject: str, allowed: bool, found: int) -> None:
        """Write the lookup's record and wait until the broker acknowledged it."""
        key, value = self.chain.append(
            outcome=LOOKUP,
            event_id=None,
            publisher=asker,
            event_type=None,
            payload_sha256=None,
            reason=f"allowed found={found}" if allowed else "refused",
            subject=subject,
        )
        await self.producer.send_and_wait(self.topic, value, key=key)
        log.info("data tracker lookup by %s: %s", asker, "allowed" if allowed else "refused")

    async def close(self) -> None:
        """Stop the producer."""
        await self.producer.stop()
