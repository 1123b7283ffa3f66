"""The event stream ``make demo`` sends through the bus, and the tally of where each event went.

Valid events come from every owner in the catalogue, round robin, signed with the owners'
demo keys; invalid ones are mixed in evenly, each of a kind the pipeline must reject with a
known reason (tampered payload, unknown key, repeated id, not Avro, wrong ingress topic).
The tally is filled by reading the delivery and rejection topics and the legacy endpoint, so
``lost`` is what was expected and never seen, not a constant.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from deploy.kafka.launcher import REPO
from streams.client.consuming import assign_topics
from streams.client.publisher import Publisher
from streams.contract.jsonavro import from_json
from streams.contract.signing import load_private_key
from streams.pipeline.routing import route
from streams.registry.model import BusRegistry
from streams.settings import KafkaSettings, SchemaRegistrySettings

KEYS = REPO / "deploy" / "demo-keys"
INVALID_KINDS = ("bad-signature", "unknown-key", "duplicate", "wire-format", "source-mismatch")


@dataclass
class Tally:
    """What was sent and what was seen, by event id."""

    published: int = 0
    expected: dict[tuple[str, str], str] = field(default_factory=dict)  # (id, agreement) -> sub
    http_agreements: set[str] = field(default_factory=set)
    delivered: set[tuple[str, str]] = field(default_factory=set)
    invalid: dict[str, str] = field(default_factory=dict)  # id -> expected reason
    rejected: dict[str, str] = field(default_factory=dict)  # id -> reason given
    rejected_detail: dict[str, str] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        """Expected deliveries never seen, plus invalid events neither rejected nor delivered."""
        missing = set(self.expected) - self.delivered
        unanswered = set(self.invalid) - set(self.rejected)
        return len(missing) + len(unanswered)

    @property
    def wrong(self) -> dict[str, tuple[str, str]]:
        """Rejections whose reason is not the expected one: id -> (expected, given)."""
        return {
            i: (self.invalid.get(i, "(valid)"), r)
            for i, r in self.rejected.items()
            if self.invalid.get(i) != r
        }

    def by_agreement(self) -> Counter[tuple[str, str]]:
        """Delivered count per (subscriber, agreement)."""
        return Counter((self.expected[k], k[1]) for k in self.delivered if k in self.expected)


@contextlib.asynccontextmanager
async def publishers(
    registry: BusRegistry, kafka: KafkaSettings, schema_registry: SchemaRegistrySettings
) -> AsyncIterator[dict[str, Publisher]]:
    """One connected Publisher per owning institution, with its first system and key."""
    async with contextlib.AsyncExitStack() as stack:
        found: dict[str, Publisher] = {}
        for owner in sorted({t.owner for t in registry.catalog}):
            institution = registry.institutions[owner]
            found[owner] = await stack.enter_async_context(
                Publisher.connect(
                    institution=owner,
                    system=institution.systems[0],
                    key_id=institution.keys[0].id,
                    key=load_private_key((KEYS / f"{owner}.key.pem").read_text()),
                    kafka=kafka,
                    schema_registry=schema_registry,
                    catalog=registry.catalog,
                )
            )
        yield found


async def publish_stream(
    registry: BusRegistry,
    kafka: KafkaSettings,
    schema_registry: SchemaRegistrySettings,
    tally: Tally,
    *,
    events: int,
    invalid: int,
    rate: float,
    on_publish: Callable[[], None] = lambda: None,
) -> None:
    """Publish ``events`` valid and ``invalid`` invalid events at about ``rate`` per second."""
    catalog = registry.catalog
    samples = yaml.safe_load((catalog.path.parent / "samples.yaml").read_text())
    types = list(catalog)
    subscriptions = list(registry.subscriptions.values())
    tally.http_agreements = {s.id for s in subscriptions if s.delivery == "http"}
    every = max(1, events // invalid) if invalid else 0
    raw = AIOKafkaProducer(**kafka.durable_producer_options())
    await raw.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    last_good: dict[str, str] = {}
    try:
        async with publishers(registry, kafka, schema_registry) as by_owner:
            for n in range(events + invalid):
                await asyncio.sleep(max(0.0, started + n / rate - loop.time()))  # open loop
                bad_slot = every and n % (every + 1) == every and len(tally.invalid) < invalid
                event_type, turn = types[n % len(types)], n // len(types)
                publisher = by_owner[event_type.owner]
                payload = dict(from_json(event_type.schema, samples[event_type.name]))
                payload[event_type.key] = f"{payload[event_type.key]}"[:-4] + f"{n:04d}"
                if event_type.name == "tz.go.tra.TaxPaymentReceived" and turn % 3 == 0:
                    payload["taxType"] = "STAMP_DUTY"  # one that ardhi's agreement wants
                if event_type.name == "tz.go.rita.DeathRegistered" and turn % 3 == 2:
                    payload["deceasedNin"] = None  # filtered out: no NIN to act on
                if bad_slot:
                    kind = INVALID_KINDS[len(tally.invalid) % len(INVALID_KINDS)]
                    event_id = await _send_invalid(
                        kind, publisher, event_type, payload, raw, last_good, by_owner
                    )
                    tally.invalid[event_id] = kind
                else:
                    event_id = await publisher.publish(event_type.name, payload)
                    last_good[event_type.owner] = event_id
                    for s in route(event_type.name, payload, subscriptions):
                        tally.expected[(event_id, s.id)] = s.subscriber
                tally.published += 1
                on_publish()
    finally:
        await raw.stop()


async def _send_invalid(
    kind: str,
    publisher: Publisher,
    event_type: Any,
    payload: dict[str, Any],
    raw: AIOKafkaProducer,
    last_good: dict[str, str],
    by_owner: dict[str, Publisher],
) -> str:
    """Send one invalid event of ``kind`` as a broken system would; return its event id."""
    schema_id = await publisher._schemas.id_for(event_type)
    repeated = last_good.get(event_type.owner) if kind == "duplicate" else None
    if kind == "duplicate" and repeated is None:
        kind = "wire-format"  # nothing to repeat yet from this publisher
    event = publisher.prepare(event_type, schema_id, payload, event_id=repeated)
    headers = dict(event.headers)
    value, topic = event.value, event.topic
    if kind == "bad-signature":
        tampered = bytearray(value)
        tampered[-2] ^= 1
        value = bytes(tampered)
    elif kind == "unknown-key":
        headers["ce_sigkeyid"] = f"{event_type.owner}-000000000000".encode()
    elif kind == "wire-format":
        value = b'{"not": "Avro"}'
    elif kind == "source-mismatch":
        topic = next(f"esb.ingress.{o}" for o in sorted(by_owner) if o != event_type.owner)
    await raw.send_and_wait(topic, value, key=event.key, headers=list(headers.items()))
    return event.envelope.id


async def follow(
    kafka: KafkaSettings, topics: list[str], tally: Tally, on_record: Callable[[], None]
) -> None:
    """Read delivery and rejection topics into ``tally`` until cancelled."""
    consumer = AIOKafkaConsumer(**kafka.aiokafka_options(), group_id=None)
    await consumer.start()
    try:
        await assign_topics(consumer, topics)
        while True:
            batches = await consumer.getmany(timeout_ms=300)
            for batch in batches.values():
                for record in batch:
                    headers = {k: v.decode("utf-8", "replace") for k, v in record.headers}
                    event_id = headers.get("ce_id", "")
                    if record.topic.startswith("esb.rejected."):
                        tally.rejected[event_id] = headers.get("esb_reason", "")
                        tally.rejected_detail[event_id] = headers.get("esb_detail", "")
                    elif headers.get("esb_subscription") not in tally.http_agreements:
                        tally.delivered.add((event_id, headers.get("esb_subscription", "")))
                    on_record()
    finally:
        await consumer.stop()
