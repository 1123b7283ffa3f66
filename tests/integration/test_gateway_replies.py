"""The gateway's reader of answers against the real broker: a requester granted while it
runs is followed from then on, and an answer to a call it holds reaches that call.

The registry here is a topic of the test's own (the view reads whichever topic it is
given), so the shared ``esb.registry`` is left alone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.gateway.calls import HeldCalls, ReplyReader
from deploy.worker import DEMO_BUS_KEY, DEMO_BUS_KEY_ID, DEMO_GATEWAY_KEY_ID
from streams.contract import topics
from streams.contract.envelope import Envelope, format_time
from streams.contract.requests import Status, refusal_id
from streams.contract.signing import load_private_key, sign_event
from streams.registry.model import Grant, load_registry
from streams.registry.sync import registry_records
from streams.registry.view import RegistryView
from streams.settings import REPO_ROOT, KafkaSettings
from tests.conftest import TopicFactory

pytestmark = [pytest.mark.kafka]


@pytest.fixture
def requester(kafka: str) -> Iterator[str]:
    """A new institution id whose ``esb.reply`` topic exists (deleted after the test)."""
    institution = f"t{uuid.uuid4().hex[:20]}"
    admin = AdminClient({"bootstrap.servers": kafka})
    name = topics.reply(institution)
    admin.create_topics([NewTopic(name, 2, 1)], operation_timeout=10)[name].result(timeout=15)
    yield institution
    admin.delete_topics([name], operation_timeout=10)[name].result(timeout=15)


def _refusal(request_id: str, reason: bytes, detail: bytes) -> list[tuple[str, bytes]]:
    """The headers of the bus's refusal of ``request_id``, signed with the demo bus key."""
    import datetime as dt

    envelope = Envelope(
        id=refusal_id(request_id), source="/institutions/ega/systems/govesb",
        type="tz.go.nida.VerifyNinRequest", time=format_time(dt.datetime.now(dt.UTC)),
        subject=request_id, correlation_id=request_id,
    )  # fmt: skip
    key = load_private_key(DEMO_BUS_KEY.read_text())
    signature = sign_event(key, envelope.id, envelope.source, envelope.type, envelope.time, b"")
    return [
        *envelope.signed_headers(DEMO_BUS_KEY_ID, signature),
        ("esb_status", b"refused"), ("esb_reason", reason), ("esb_detail", detail),
    ]  # fmt: skip


async def _until(condition: Callable[[], bool], bound_s: float = 20) -> None:
    async with asyncio.timeout(bound_s):
        while not condition():  # noqa: ASYNC110 - polls the reader's state
            await asyncio.sleep(0.05)


async def test_a_requester_granted_later_is_followed_and_its_answer_reaches_the_call(
    kafka: str, topic_factory: TopicFactory, requester: str
) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka)
    registry_topic = topic_factory("test-registry")
    producer = AIOKafkaProducer(bootstrap_servers=kafka)
    await producer.start()
    # The operator's record (its keys sign answers and refusals) on the test's registry topic.
    example, _ = load_registry(REPO_ROOT / "deploy" / "registry.example.yaml")
    assert example is not None
    await producer.send_and_wait(
        registry_topic, registry_records(example)["institution/ega"], key=b"institution/ega"
    )
    view = RegistryView(settings, topic=registry_topic)
    await view.start()
    reader = ReplyReader(settings, view, HeldCalls(), DEMO_GATEWAY_KEY_ID)
    await reader.start()
    try:
        assert not reader.following(requester)
        # Something on the topic before it is followed answers nothing now.
        stale = str(uuid.uuid4())
        await producer.send_and_wait(
            topics.reply(requester), None, key=stale.encode(),
            headers=_refusal(stale, b"no-grant", b"stale"),
        )  # fmt: skip

        grant = Grant(id=f"g{uuid.uuid4().hex[:12]}", consumer=requester,
                      api_code="VERIFY_NIN", fields=["nin"])  # fmt: skip
        await producer.send_and_wait(
            registry_topic, grant.model_dump_json().encode(), key=f"grant/{grant.id}".encode()
        )
        await _until(lambda: reader.following(requester))
        assert requester in reader.health()["requesters"]

        request_id = str(uuid.uuid4())
        stale_call = reader.calls.hold(stale)
        call = reader.calls.hold(request_id)
        await producer.send_and_wait(
            topics.reply(requester), None, key=request_id.encode(),
            headers=_refusal(request_id, b"no-grant", b"withdrawn"),
        )  # fmt: skip
        answer = await asyncio.wait_for(call, 20)
        assert (answer.status, answer.reason, answer.message) == (
            Status.REFUSED, "no-grant", "withdrawn",
        )  # fmt: skip
        assert not stale_call.done()  # read from where the topic ended when it was followed
        # An answer that claims success but is not signed by the bus answers nothing.
        unsigned = str(uuid.uuid4())
        unsigned_call = reader.calls.hold(unsigned)
        await producer.send_and_wait(
            topics.reply(requester), b'{"nin":"1"}', key=unsigned.encode(),
            headers=[("ce_correlationid", unsigned.encode()), ("esb_status", b"answered")],
        )  # fmt: skip
        await _until(lambda: reader.unreadable >= 1)
        assert not unsigned_call.done()
        # Nor does a refusal nobody signed (anyone who may write the topic could send one).
        forged = str(uuid.uuid4())
        forged_call = reader.calls.hold(forged)
        await producer.send_and_wait(
            topics.reply(requester), None, key=forged.encode(),
            headers=[("ce_correlationid", forged.encode()), ("esb_status", b"refused")],
        )  # fmt: skip
        await _until(lambda: reader.unreadable >= 2)
        assert not forged_call.done()
        assert reader.health()["ok"] is True
    finally:
        await reader.stop()
        await view.stop()
        await producer.stop()
