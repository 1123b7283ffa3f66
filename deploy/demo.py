"""``make demo``: start the local bus, publish one government event, consume it back.

This is the foundation demo: a real Kafka broker and Apicurio registry are started from the
cached Maven jars, NIDA's ``CitizenRegistered`` schema is registered (RecordNameStrategy),
one event is produced with its CloudEvents headers (acks=all, idempotent) and read back by a
subscriber. The pipeline stages join it as they are built.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from rich.console import Console
from rich.table import Table

from deploy.kafka.launcher import REPO, LauncherError, LocalBus

SCHEMA = REPO / "schemas" / "nida" / "CitizenRegistered.avsc"
TOPIC = "esb.ingress.nida"


def sample_citizen() -> dict[str, object]:
    """A realistic NIDA registration."""
    return {
        "nin": "19900114141230000121",
        "firstName": "Neema",
        "middleName": "Juma",
        "lastName": "Mwakyusa",
        "dateOfBirth": dt.date(1990, 1, 14),
        "sex": "FEMALE",
        "nationality": "TZA",
        "region": "Dodoma",
        "district": "Dodoma Urban",
        "ward": "Makole",
        "phoneNumber": "+255754000111",
        "registeredAt": dt.datetime.now(dt.UTC).replace(microsecond=0),
        "registrationOffice": "NIDA-DOM-01",
    }


def run(console: Console) -> None:
    """Publish and consume one event on a freshly started local bus."""
    with LocalBus(say=lambda line: console.print(f"[dim]{line}[/dim]")) as bus:
        registry = SchemaRegistryClient({"url": bus.registry_url})
        serializer = AvroSerializer(
            registry,
            SCHEMA.read_text(),
            conf={"subject.name.strategy": record_subject_name_strategy},
        )
        context = SerializationContext(TOPIC, MessageField.VALUE)
        citizen = sample_citizen()
        event_id = str(uuid.uuid4())
        headers = {
            "ce_specversion": "1.0",
            "ce_id": event_id,
            "ce_source": "/institutions/nida/systems/crvs",
            "ce_type": "tz.go.nida.CitizenRegistered",
            "ce_time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "ce_subject": str(citizen["nin"]),
            "content-type": "application/avro",
        }
        producer = Producer(
            {"bootstrap.servers": bus.bootstrap, "acks": "all", "enable.idempotence": True}
        )
        producer.produce(
            TOPIC,
            key=str(citizen["nin"]).encode(),
            value=serializer(citizen, context),
            headers=[(name, value.encode()) for name, value in headers.items()],
        )
        unacknowledged = producer.flush(15)
        producer.close()
        if unacknowledged:
            raise LauncherError("the broker did not acknowledge the sample event within 15 s")
        console.print(f"published [bold]{headers['ce_type']}[/bold] id={event_id} to {TOPIC}")

        consumer = Consumer(
            {
                "bootstrap.servers": bus.bootstrap,
                "group.id": "demo-subscriber",
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe([TOPIC])
        try:
            message = consumer.poll(20)
        finally:
            consumer.close()
        if message is None or message.error():
            raise LauncherError(f"the subscriber received nothing: {message and message.error()}")
        received = AvroDeserializer(registry)(message.value(), context)

        table = Table(title=f"consumed from {TOPIC}", show_header=False)
        raw_headers = message.headers() or []
        pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
        for name, value in pairs:
            table.add_row(name, value.decode() if isinstance(value, bytes) else str(value))
        table.add_row("payload", json.dumps(received, default=str, indent=1))
        console.print(table)
        console.print(
            f"delivered: {int(received == citizen)}/1, schema subject: {registry.get_subjects()}"
        )


def main() -> int:
    """Entry point of ``python -m deploy.demo``."""
    console = Console()
    try:
        run(console)
    except LauncherError as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
