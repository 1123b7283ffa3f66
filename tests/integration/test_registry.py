"""The registry fixture is a real Confluent-compatible registry (Apicurio)."""

from __future__ import annotations

import json
import struct
import uuid

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient, record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

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
