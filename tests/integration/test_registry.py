"""The registry fixture is a real Confluent-compatible registry (Apicurio)."""

from __future__ import annotations

import json
import struct
import uuid

import pytest
from confluent_kafka.schema_registry import (
    AsyncSchemaRegistryClient,
    Schema,
    SchemaRegistryClient,
    record_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from streams.contract.codec import SchemaStore

pytestmark = [pytest.mark.registry]


def _schema(namespace: str) -> str:
    return json.dumps(
        {
            "type": "record",
            "name": "TaxPaymentReceived",
            "namespace": namespace,
            "doc": "A tax payment was received.",
            "fields": [
                {"name": "tin", "type": "string", "doc": "Taxpayer identification number."},
                {"name": "amountCents", "type": "long", "doc": "Amount in TZS cents."},
            ],
        }
    )


def test_avro_round_trip_through_the_registry_with_record_name_subjects(registry: str) -> None:
    namespace = f"tz.go.test{uuid.uuid4().hex[:8]}"
    client = SchemaRegistryClient({"url": registry})
    serializer = AvroSerializer(
        client,
        _schema(namespace),
        conf={"subject.name.strategy": record_subject_name_strategy},
    )
    context = SerializationContext("esb.ingress.tra", MessageField.VALUE)
    payment = {"tin": "100-200-300", "amountCents": 1_250_000}

    wire = serializer(payment, context)

    subject = f"{namespace}.TaxPaymentReceived"
    assert subject in client.get_subjects()
    registered = client.get_latest_version(subject)
    assert wire[0] == 0
    assert struct.unpack(">I", wire[1:5])[0] == registered.schema_id
    assert AvroDeserializer(client)(wire, context) == payment


async def test_a_delivery_subject_under_an_enforced_compatibility_level_still_takes_a_new_shape(
    registry: str,
) -> None:
    """An agreement that starts sharing a required field is BACKWARD-incompatible; a registry
    enforcing that on the bus's own delivery subject must not stall the pipeline."""
    subject = f"tz.go.esb.delivery.test{uuid.uuid4().hex[:8]}.TaxPaymentReceived"
    client = AsyncSchemaRegistryClient({"url": registry})
    store = SchemaStore(client)
    first = json.loads(_schema("tz.go.esb.delivery"))
    first["fields"] = first["fields"][:1]
    second = json.loads(_schema("tz.go.esb.delivery"))
    first_id = await store.register(subject, first)
    await client.set_compatibility(subject_name=subject, level="BACKWARD")
    with pytest.raises(SchemaRegistryError) as refused:  # the registry does enforce it
        await client.register_schema(subject, Schema(json.dumps(second), "AVRO"))
    assert refused.value.http_status_code == 409

    second_id = await store.register(subject, second)

    assert second_id != first_id
    latest = await client.get_latest_version(subject)
    assert (latest.schema_id, json.loads(latest.schema.schema_str)) == (second_id, second)
    assert await client.get_compatibility(subject) == "NONE"
