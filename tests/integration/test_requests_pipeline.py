"""Requests and answers through a real ``govesb worker``, at the wire contract's level.

A Kafka-native requester (tra) asks nida's VERIFY_NIN; nida answers with the ticket the bus put
on the request; the answer reaches tra minimised and masked, and nobody else. A provider
cannot answer for a request it never got, nor redirect an answer to another requester. A
worker killed between the request and its answer loses nothing: the answer, published while
no worker runs, reaches tra once the next worker starts, and only tra.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from streams.audit.verify import read_audit
from streams.contract import topics
from streams.contract.codec import SchemaStore, encode
from streams.contract.envelope import new_envelope
from streams.contract.requests import TICKET_HEADERS, answer_id
from streams.contract.signing import load_private_key, sign_event
from streams.settings import REPO_ROOT, KafkaSettings
from tests.integration.chaos import header, new_system, read_topic
from tests.unit.pipeline_fixtures import CATALOG, KEY_IDS

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.slow]

SERVICE = CATALOG.services["VERIFY_NIN"]
NIN = "19900114141010000125"
ANSWER = {
    "nin": NIN, "valid": True, "firstName": "Neema", "middleName": "Joseph",
    "lastName": "Mwakyusa", "dateOfBirth": "1990-01-14", "phoneNumber": "+255754123456",
    "alive": True,
}  # fmt: skip


class Institution:
    """An institution's system speaking the request/reply contract with bare aiokafka."""

    def __init__(self, kafka: str, registry: str, institution: str) -> None:
        self.institution = institution
        self.system = new_system()
        self.source = f"/institutions/{institution}/systems/{self.system}"
        self.key = load_private_key(
            (REPO_ROOT / f"deploy/demo-keys/{institution}.key.pem").read_text()
        )
        self.key_id = {**KEY_IDS, "moh": "moh-563d2616bddc"}[institution]
        self.schemas = SchemaStore(AsyncSchemaRegistryClient({"url": registry}))
        self.producer = AIOKafkaProducer(
            **KafkaSettings(bootstrap_servers=kafka).durable_producer_options()
        )

    async def __aenter__(self) -> Institution:
        await self.producer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.producer.stop()

    async def send(
        self,
        record_type: Any,
        payload: dict[str, Any],
        *,
        event_id: str,
        correlation_id: str | None = None,
        extra: tuple[tuple[str, bytes], ...] = (),
    ) -> None:
        value = encode(await self.schemas.id_for(record_type), record_type.parsed, payload)
        request_id = correlation_id or event_id
        envelope = new_envelope(
            self.institution, self.system, record_type.name, request_id,
            event_id=event_id, correlation_id=correlation_id,
        )  # fmt: skip
        signature = sign_event(
            self.key, envelope.id, envelope.source, envelope.type, envelope.time, value
        )
        await self.producer.send_and_wait(
            topics.ingress(self.institution), value, key=request_id.encode(),
            headers=[*envelope.signed(self.key_id, signature).to_headers(), *extra],
        )  # fmt: skip

    async def ask(self, request_id: str) -> None:
        await self.send(SERVICE.request, {"nin": NIN}, event_id=request_id,
                        extra=(("esb_api", b"VERIFY_NIN"),))  # fmt: skip

    async def answer(self, routed: Any, payload: dict[str, Any], **options: Any) -> None:
        request_id = header(routed, "ce_id")
        ticket = tuple((k, bytes(v)) for k, v in routed.headers if k in TICKET_HEADERS)
        await self.send(
            SERVICE.response, payload, event_id=options.get("event_id", answer_id(request_id)),
            correlation_id=options.get("correlation_id", request_id),
            extra=options.get("ticket", ticket),
        )  # fmt: skip


async def _routed(kafka: str, requester: Institution, request_id: str) -> Any:
    found = await read_topic(
        kafka, topics.request("nida"), requester.source, want={request_id}, wait_s=60
    )
    mine = [r for r in found if header(r, "ce_id") == request_id]
    assert mine, f"request {request_id} was not routed to esb.request.nida"
    return mine[0]


async def _answers(kafka: str, topic: str, provider: Institution, request_id: str) -> list[Any]:
    found = await read_topic(kafka, topic, provider.source, want={answer_id(request_id)},
                             wait_s=60)  # fmt: skip
    return [r for r in found if header(r, "ce_correlationid") == request_id]


@pytest.mark.timeout(240)
async def test_a_request_is_answered_minimised_and_only_to_its_requester(
    kafka: str, registry: str, start_worker
) -> None:
    start_worker()
    async with (
        Institution(kafka, registry, "tra") as tra,
        Institution(kafka, registry, "nida") as nida,
    ):
        request_id = str(uuid.uuid4())
        await tra.ask(request_id)
        routed = await _routed(kafka, tra, request_id)
        assert header(routed, "esb_requester") == "tra"
        assert header(routed, "ce_sigkeyid") == "ega-d06f8e0a5d19"  # re-signed by the bus
        await nida.answer(routed, ANSWER)
        [answer] = await _answers(kafka, topics.reply("tra"), nida, request_id)
        assert header(answer, "esb_status") == "answered"
        assert json.loads(answer.value) == {  # grant tra-verify-nin, phoneNumber masked
            "nin": NIN, "valid": True, "firstName": "Neema", "lastName": "Mwakyusa",
            "phoneNumber": "*********3456", "alive": True,
        }  # fmt: skip

        # moh asks too; nida tries to send moh's answer with tra's ticket, and to answer a
        # request that was never made: both are refused, and tra gets nothing more.
        other = str(uuid.uuid4())
        moh = Institution(kafka, registry, "moh")
        async with moh:
            await moh.ask(other)
        moh_routed = await _routed(kafka, moh, other)
        never = str(uuid.uuid4())
        redirected, invented = str(uuid.uuid4()), answer_id(never)
        await nida.answer(routed, ANSWER, correlation_id=other, event_id=redirected)
        await nida.answer(moh_routed, ANSWER, correlation_id=never, event_id=invented)
        refused = await read_topic(kafka, topics.rejected("nida"), nida.source,
                                   want={redirected, invented}, wait_s=60)  # fmt: skip
        reasons = {(header(r, "ce_id"), header(r, "esb_reason")) for r in refused}
        assert {(redirected, "bad-ticket"), (invented, "bad-ticket")} <= reasons, reasons
        assert await _answers(kafka, topics.reply("tra"), nida, other) == []
        assert await _answers(kafka, topics.reply("moh"), nida, never) == []


@pytest.mark.timeout(300)
async def test_a_worker_killed_between_request_and_answer_loses_nothing(
    kafka: str, registry: str, start_worker
) -> None:
    app_id = f"test-calls-{uuid.uuid4().hex[:8]}"
    worker = start_worker(app_id)
    async with (
        Institution(kafka, registry, "tra") as tra,
        Institution(kafka, registry, "nida") as nida,
    ):
        request_id = str(uuid.uuid4())
        await tra.ask(request_id)
        routed = await _routed(kafka, tra, request_id)
        assert worker.kill() != 0
        await nida.answer(routed, ANSWER)  # while no worker runs
        start_worker(app_id)  # the same group: it reads on from the last committed offset
        answers = await _answers(kafka, topics.reply("tra"), nida, request_id)
        assert answers, "the answer published while the worker was down was lost"
        # Read again after a crash, an answer is the same event (one id), never another.
        assert {header(a, "ce_id") for a in answers} == {answer_id(request_id)}
        assert {json.loads(a.value)["nin"] for a in answers} == {NIN}
        assert await _answers(kafka, topics.reply("moh"), nida, request_id) == []
        audit = await read_audit(KafkaSettings(bootstrap_servers=kafka), topics.AUDIT)
        answered = [
            json.loads(v) for _, _, v in audit
            if v and request_id.encode() in v and b'"answered"' in v
        ]  # fmt: skip
        assert answered, "no audit record of the answer"
        assert {a["subscribers"][0] for a in answered} == {"tra"}
