"""Held calls and the reader of their answers (``/engine/esb/request``).

Every gateway replica reads every partition of ``esb.reply.<requester>`` of the requesters
that have a grant: group-less, assigned, from where the topic ends when it starts following
it. A replica answers only the calls it holds (request id -> future); the answers to calls
held by another replica are read and dropped. A requester is followed before its first
request is published, so its answer cannot come before the reader's position; requesters
granted later (a registry change) are followed as soon as the view tells, or at their first
call at the latest.

An answer must be signed by one of the bus's own keys (the operator's, not the gateway's):
the reply topics are written by the pipeline alone, and a record signed otherwise answers no
call. The bus's refusal of a request may carry no signature: it can only say no.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streams.client import fetch_guard
from streams.contract import topics
from streams.contract.envelope import CONTENT_TYPE, JSON_CONTENT_TYPE, Envelope
from streams.contract.reasons import EventError
from streams.contract.requests import (
    API_HEADER,
    LATE_HEADER,
    MESSAGE_HEADER,
    STATUS_HEADER,
    Status,
    answer_id,
    header,
    refusal_id,
)
from streams.contract.signing import KeyRing, SigningError, verify_event
from streams.pipeline.validation import OPERATOR
from streams.registry.view import RegistryView
from streams.settings import KafkaSettings

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes | None]]


@dataclass(frozen=True, slots=True)
class Answer:
    """What came back for a request: the bus's refusal, the provider's error, or its answer
    (``body``: the answer minimised for the requester, as JSON)."""

    request_id: str
    status: Status
    body: Any = None
    reason: str = ""
    message: str = ""
    late: bool = False
    api_code: str = ""


class UnreadableAnswer(ValueError):
    """A record on a reply topic that answers no call (unsigned, unreadable, not JSON)."""


def _text(headers: Headers, name: str) -> str:
    raw = header(headers, name)
    return raw.decode("utf-8", errors="replace") if raw else ""


def read_answer(
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    keyring: KeyRing,
    bus_keys: Collection[str],
) -> Answer:
    """The answer a record of ``esb.reply.<requester>`` carries.

    Raises:
        UnreadableAnswer: no request id, an unknown status, a signature that is not the
            bus's, or an answer whose value is not JSON.
    """
    request_id = _text(headers, "ce_correlationid") or (key or b"").decode(errors="replace")
    if not request_id:
        raise UnreadableAnswer("no ce_correlationid: it answers no request")
    status_text = _text(headers, STATUS_HEADER) or Status.ANSWERED
    try:
        status = Status(status_text)
    except ValueError:
        raise UnreadableAnswer(f"esb_status {status_text!r} is none the contract knows") from None
    # Refusals are signed by the bus too; and the signature covers ce_id, not
    # ce_correlationid: an id derived from the request binds the record to it.
    _check_signed(value, headers, keyring, bus_keys)
    event_id = _text(headers, "ce_id") or ""
    if event_id not in (answer_id(request_id), refusal_id(request_id)):
        raise UnreadableAnswer("ce_id is not the answer's or the refusal's id of its request")
    body: Any = None
    if status is Status.ANSWERED:
        try:
            body = json.loads(value or b"")
        except ValueError:  # UnicodeDecodeError is one
            raise UnreadableAnswer("the answer's value is not JSON") from None
    message = _text(headers, MESSAGE_HEADER) or _text(headers, "esb_detail")
    return Answer(
        request_id=request_id,
        status=status,
        body=body,
        reason=_text(headers, "esb_reason"),
        message=message,
        late=_text(headers, LATE_HEADER) in ("1", "true"),
        api_code=_text(headers, API_HEADER),
    )


def _check_signed(
    value: bytes | None, headers: Headers, keyring: KeyRing, bus_keys: Collection[str]
) -> None:
    try:
        envelope = Envelope.from_headers(headers, accept=(CONTENT_TYPE, JSON_CONTENT_TYPE))
    except EventError as error:
        raise UnreadableAnswer(f"{error.reason}: {error.detail}") from None
    key_id, signature = envelope.sig_key_id, envelope.signature
    if key_id is None or key_id not in bus_keys or not signature:
        raise UnreadableAnswer(f"signed with {key_id!r}, not a key of the bus")
    try:
        verify_event(
            keyring, key_id, signature, envelope.id, envelope.source,
            envelope.type, envelope.time, value or b"",
        )  # fmt: skip
    except SigningError as error:
        raise UnreadableAnswer(f"the bus's signature does not verify ({error})") from None


class HeldCalls:
    """The calls this replica holds, by request id, each waiting for its answer."""

    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Future[Answer]] = {}
        self._owners: dict[str, tuple[str, str]] = {}

    def hold(
        self, request_id: str, requester: str = "", api_code: str = ""
    ) -> asyncio.Future[Answer]:
        """A future for the answer to ``request_id`` of ``requester`` for ``api_code``
        (released with :meth:`release`)."""
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._calls[request_id] = future
        self._owners[request_id] = (requester, api_code)
        return future

    def release(self, request_id: str) -> None:
        """Stop holding ``request_id`` (answered, timed out, or its publishing failed)."""
        self._calls.pop(request_id, None)
        self._owners.pop(request_id, None)

    def resolve(self, answer: Answer, topic: str | None = None) -> bool:
        """Hand ``answer`` (read from ``topic``) to the call waiting for it; whether this
        replica held one. Only an answer on the caller's own reply topic, for the api code
        it called, is its answer: the same request id elsewhere is someone else's."""
        future = self._calls.get(answer.request_id)
        if future is None or future.done():
            return False
        requester, api_code = self._owners.get(answer.request_id, ("", ""))
        if topic is not None and requester and topic != topics.reply(requester):
            return False
        if api_code and answer.api_code and answer.api_code != api_code:
            return False
        future.set_result(answer)
        return True

    def __len__(self) -> int:
        return len(self._calls)


def bus_key_ids(view: RegistryView, gateway_key_id: str) -> list[str]:
    """The operator's keys that sign for the bus itself: every one but the gateway's own."""
    return [
        key_id
        for key_id, owner in view.key_owners.items()
        if owner == OPERATOR and key_id != gateway_key_id
    ]


def requesters(view: RegistryView) -> set[str]:
    """The institutions with a grant: those with an ``esb.reply`` topic."""
    return {grant.consumer for grant in view.grants.values()}


class ReplyReader:
    """Reads the reply topics of every requester with a grant and resolves held calls.

    Answers must be signed by a key of the bus other than ``gateway_key_id``.
    """

    POLL_MS = 200

    def __init__(
        self,
        kafka: KafkaSettings,
        view: RegistryView,
        calls: HeldCalls,
        gateway_key_id: str,
    ) -> None:
        self._kafka = kafka
        self._view = view
        self.calls = calls
        self._gateway_key_id = gateway_key_id
        self._consumer: AIOKafkaConsumer | None = None
        self._followed: set[str] = set()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._followers: set[asyncio.Task[None]] = set()
        self.unreadable = 0

    @property
    def running(self) -> bool:
        """Whether the reader is started and reading."""
        return self._task is not None and not self._task.done()

    def following(self, requester: str) -> bool:
        """Whether the answers to ``requester`` are being read."""
        return requester in self._followed

    async def start(self) -> None:
        """Follow every requester the view knows, then read; returns once positioned."""
        fetch_guard.install()
        self._consumer = AIOKafkaConsumer(
            **self._kafka.aiokafka_options(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
        )
        await self._consumer.start()
        await self.follow(requesters(self._view))
        self._view.on_change(self._registry_changed)
        self._task = asyncio.create_task(self._read(), name="govesb-gateway-replies")

    def _registry_changed(self, key: str) -> None:
        if key.startswith("grant/") and (requesters(self._view) - self._followed):
            task = asyncio.ensure_future(self.follow(requesters(self._view)))
            self._followers.add(task)
            task.add_done_callback(self._followers.discard)

    async def follow(self, institutions: Iterable[str]) -> None:
        """Read ``esb.reply.<institution>`` of each of ``institutions`` from where it ends now.

        Topics that do not exist (yet) are left out and tried again at the next call.
        """
        if self._consumer is None or self._followed.issuperset(institutions):
            return
        async with self._lock:  # the read loop holds it while polling: no fetch meanwhile
            consumer = self._consumer
            added: list[TopicPartition] = []
            newly: list[str] = []
            for institution in sorted(set(institutions) - self._followed):
                topic = topics.reply(institution)
                partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    with contextlib.suppress(KafkaError):
                        await consumer._client.add_topic(topic)
                    partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    log.warning("%s does not exist: its answers cannot be read yet", topic)
                    continue
                added += [TopicPartition(topic, p) for p in sorted(partitions)]
                newly.append(institution)
            if not added:
                return
            kept = list(consumer.assignment())
            positions = {tp: await consumer.position(tp) for tp in kept}
            consumer.assign(kept + added)
            for tp, offset in positions.items():
                consumer.seek(tp, offset)
            await consumer.seek_to_end(*added)
            for tp in added:
                await consumer.position(tp)  # resolved now, before any request is published
            self._followed.update(newly)
            log.info("reading the answers to %s", ", ".join(newly))

    async def _read(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        while True:
            if not consumer.assignment():  # no requester yet
                await asyncio.sleep(self.POLL_MS / 1000)
                continue
            try:
                # Held while polling, so follow() never changes the assignment mid-fetch
                # (asyncio's lock is fair: a waiting follow() gets it next).
                async with self._lock:
                    batches = await consumer.getmany(timeout_ms=self.POLL_MS)
            except KafkaError as error:  # the broker away: the consumer reconnects
                log.warning("reading answers: %s; retrying in 1 s", error)
                await asyncio.sleep(1)
                continue
            bus_keys = set(bus_key_ids(self._view, self._gateway_key_id))
            for records in batches.values():
                for record in records:
                    self._answer(record, bus_keys)

    def _answer(self, record: Any, bus_keys: Collection[str]) -> None:
        try:
            answer = read_answer(
                record.key, record.value, list(record.headers), self._view.keyring, bus_keys
            )
        except UnreadableAnswer as error:
            self.unreadable += 1
            log.error(
                "%s offset %d partition %d answers no call: %s",
                record.topic, record.offset, record.partition, error,
            )  # fmt: skip
            return
        self.calls.resolve(answer, record.topic)

    def health(self) -> dict[str, Any]:
        """``/health``'s ``replies`` check."""
        return {
            "ok": self.running,
            "requesters": sorted(self._followed),
            "held_calls": len(self.calls),
            "unreadable": self.unreadable,
        }

    async def stop(self) -> None:
        """Stop reading (bounded: the consumer is closed)."""
        for task in [self._task, *self._followers]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
