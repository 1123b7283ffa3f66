"""The live view of ``esb.registry`` every process keeps, and how healthy it is.

The view fails closed. A record it cannot read (malformed, or written by a newer tool in a
format it does not know) does not leave the previous value in force: a key revocation or a
narrower agreement written that way would otherwise be ignored. An unreadable
``institution/<id>`` withholds that institution — its keys and the agreements it subscribes
to — so its events are rejected (``unknown-key``) and nothing is delivered to it under a state
the view cannot read; an unreadable agreement or event type is withheld on its own. Every
other institution goes on as before. A readable record (or a tombstone) for the same key lifts
it. A record of a kind this version does not know is reported, and left out of ``raw`` so that
``registry apply`` does not delete it. ``health()`` says what is withheld and unreadable,
whether the view has loaded, and whether it is stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streams.client import fetch_guard
from streams.client.consuming import assign_whole_topic
from streams.contract import topics
from streams.contract.signing import KeyFormatError, KeyRing, PublicKey, load_public_key
from streams.registry.model import Grant, Institution, Service, Subscription
from streams.settings import KafkaSettings

log = logging.getLogger(__name__)


class EventTypeRecord(BaseModel):
    """An event type as published on ``esb.registry``."""

    # A field this version does not know makes the record unreadable (fail closed).
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    name: str
    owner: str
    key: str
    pii: list[str] = []
    compatibility: str = "BACKWARD"
    description: str = ""
    avro_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")


class ServiceRecord(Service):
    """A service as published on ``esb.registry``: how it is served, plus its catalogue
    entry's provider and record names."""

    provider: str
    request_type: str
    response_type: str
    description: str = ""
    key: str = ""


_MODELS: dict[str, type[BaseModel]] = {
    "institution": Institution,
    "event-type": EventTypeRecord,
    "subscription": Subscription,
    "service": ServiceRecord,
    "grant": Grant,
}


@dataclass(frozen=True)
class Unreadable:
    """A record the view could not read: why, and whom it concerns (when that is readable)."""

    key: str
    reason: str
    institution: str | None = None


def _why(error: ValueError) -> str:
    """A short reason: the first validation problem (never the whole input)."""
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(record)"
        more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
        return f"{where}: {first['msg']}{more}"
    if isinstance(error, json.JSONDecodeError | UnicodeDecodeError):
        return f"not JSON: {error}"[:200]
    return str(error)[:200]


def _concerns(kind: str, name: str, value: bytes) -> str | None:
    """The institution an unreadable record is about, if that much can be read."""
    if kind == "institution":
        return name
    try:
        document = json.loads(value)
    except ValueError:
        return None
    field = {"subscription": "subscriber", "grant": "consumer", "service": "provider"}.get(
        kind, "owner"
    )
    found = document.get(field) if isinstance(document, dict) else None
    return found if isinstance(found, str) else None


def view_health(
    *,
    loaded: bool,
    unreadable: Collection[Unreadable],
    withheld: Collection[str],
    behind: int | None,
    idle_s: float | None,
    stale_after_s: float,
) -> dict[str, Any]:
    """The view's health: ``ok`` when loaded, every record readable and not stale.

    ``behind`` is how many records the topic's end is ahead of what was read (None: not
    known), ``idle_s`` how long ago the view last read a record or was caught up. Stale means
    the topic moved and nothing was read for ``stale_after_s``.
    """
    stale = bool(behind) and idle_s is not None and idle_s > stale_after_s
    return {
        "ok": loaded and not unreadable and not stale,
        "loaded": loaded,
        "stale": stale,
        "behind": behind,
        "idle_s": None if idle_s is None else round(idle_s, 1),
        "withheld_institutions": sorted(withheld),
        "unreadable": [
            {"key": u.key, "reason": u.reason, "institution": u.institution}
            for u in sorted(unreadable, key=lambda u: u.key)
        ],
    }


class RegistryView:
    """An in-memory view of ``esb.registry``, kept up to date while running.

    ``await view.start()`` returns once everything written before it is loaded; changes made
    later arrive within the consumer's poll interval and call the ``on_change`` callbacks.
    ``refused_keys`` are key ids never put in the keyring (the published demo keys, outside
    the dev stack); ``gateway_keys`` are the key ids of the bus's HTTP gateway.
    """

    LOAD_TIMEOUT_S = 30.0
    # How often a following view asks the broker where the topic ends (for staleness).
    END_CHECK_S = 5.0

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        topic: str = topics.REGISTRY,
        refused_keys: Collection[str] = (),
        gateway_keys: Collection[str] = (),
        stale_after_s: float = 60.0,
    ) -> None:
        self._kafka = kafka
        self._topic = topic
        self.raw: dict[str, bytes] = {}
        self.institutions: dict[str, Institution] = {}
        self.event_types: dict[str, EventTypeRecord] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.services: dict[str, ServiceRecord] = {}
        self.grants: dict[str, Grant] = {}
        self.keyring = KeyRing()
        self.refused_keys = frozenset(refused_keys)
        self.gateway_keys = frozenset(gateway_keys)
        self.stale_after_s = stale_after_s
        self._read: dict[str, dict[str, Any]] = {kind: {} for kind in _MODELS}
        self._unreadable: dict[str, Unreadable] = {}
        self._key_owner: dict[str, str] = {}
        self._listeners: list[Callable[[str], None]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._loaded = False
        self._end: dict[TopicPartition, int] = {}
        self._position: dict[TopicPartition, int] = {}
        self._progress_at: float | None = None
        self.version = 0

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(key)`` after every record that changed what the view serves."""
        self._listeners.append(listener)

    @property
    def key_owners(self) -> dict[str, str]:
        """Institution of every non-revoked key id."""
        return self._key_owner

    def key_owner(self, key_id: str) -> str | None:
        """The institution a (non-revoked) key id belongs to."""
        return self._key_owner.get(key_id)

    @property
    def withheld(self) -> frozenset[str]:
        """Institutions withheld because their own record could not be read."""
        return frozenset(u.institution for u in self._unreadable.values()
                         if u.key.startswith("institution/") and u.institution)  # fmt: skip

    # ----------------------------------------------------------------- applying records

    def apply(self, key: str, value: bytes | None) -> None:
        """Apply one record; one it cannot read withholds what it is about, never fatal."""
        kind, _, name = key.partition("/")
        model = _MODELS.get(kind)
        read = self._read.get(kind, {})
        had = name in read
        was_unreadable = self._unreadable.pop(key, None) is not None
        if value is None:
            read.pop(name, None)
            self.raw.pop(key, None)
            changed = had
        else:
            if model is not None:  # kept, so that `registry apply` rewrites what is unreadable;
                self.raw[key] = value  # a kind it does not know it must not delete either
            try:
                if model is None:
                    raise ValueError(f"unknown record kind {kind!r}")
                document = model.model_validate(json.loads(value))
                named = next(
                    (getattr(document, a) for a in ("id", "name", "api_code")
                     if getattr(document, a, None)),
                    None,
                )  # fmt: skip
                if named != name:  # it would speak for another entry (keys, owners)
                    raise ValueError(f"the record is of {named!r}, not {name!r}")
                read[name] = document
                changed = True
            except ValueError as error:  # ValidationError is a ValueError
                read.pop(name, None)
                changed = had
                unreadable = Unreadable(key, _why(error), _concerns(kind, name, value))
                self._unreadable[key] = unreadable
                log.error(
                    "esb.registry: cannot read %r (%s); withholding %s until a readable record "
                    "replaces it",
                    key, unreadable.reason,
                    f"institution {name}: its keys and agreements" if kind == "institution"
                    else "it",
                )  # fmt: skip
        if kind == "institution" or changed:
            served = set(self.subscriptions)
            self._rebuild(keys=kind == "institution")
            changed = changed or set(self.subscriptions) != served
        if changed or was_unreadable != (key in self._unreadable):
            # (what is withheld may change with no record read: ``version`` says so too)
            self.version += 1
        if changed:
            for listener in self._listeners:
                listener(key)

    def _rebuild(self, *, keys: bool) -> None:
        withheld = self.withheld
        self.institutions = {
            name: i for name, i in self._read["institution"].items() if name not in withheld
        }
        self.event_types = dict(self._read["event-type"])
        self.subscriptions = {
            name: s
            for name, s in self._read["subscription"].items()
            if s.subscriber not in withheld
        }
        self.services = {
            name: s for name, s in self._read["service"].items() if s.provider not in withheld
        }
        self.grants = {
            name: g for name, g in self._read["grant"].items() if g.consumer not in withheld
        }
        if keys:
            self._rebuild_keys()

    def _rebuild_keys(self) -> None:
        ring, owners = KeyRing(), {}
        for institution in self.institutions.values():
            for key in institution.keys:
                if key.revoked or key.id in self.refused_keys:
                    continue
                try:
                    ring.add(key.id, load_public_key(key.public_key))
                except KeyFormatError as error:
                    log.warning("esb.registry: key %s of %s: %s", key.id, institution.id, error)
                    continue
                owners[key.id] = institution.id
        self.keyring, self._key_owner = ring, owners

    def signing_key_problem(self, key_id: str, public_key: PublicKey, owner: str) -> str | None:
        """Why ``key_id`` (with ``public_key``) is not a current key of ``owner`` here, if not.

        A process that signs for the bus checks its own key this way at start: deliveries
        signed with a key nobody can look up (a placeholder id, a revoked key, the wrong key
        file) would be unverifiable for every subscriber.
        """
        registered_to = self._key_owner.get(key_id)
        if registered_to is None:
            return (
                f"key id {key_id!r} is not a current key in esb.registry: register its public "
                f"key under {owner} (`govesb registry apply`), or set the right key id"
            )
        if registered_to != owner:
            return f"key id {key_id!r} is a key of {registered_to}, not of {owner}"
        if self.keyring.get(key_id) != public_key:
            return f"the key file does not hold the private key of {key_id!r}"
        return None

    # ----------------------------------------------------------------- health

    def health(self) -> dict[str, Any]:
        """``ok``, ``loaded``, ``stale``, what is withheld and the records that were unreadable."""
        behind = None
        if self._end:
            behind = sum(
                max(0, end - self._position.get(partition, 0))
                for partition, end in self._end.items()
            )
        idle = None if self._progress_at is None else time.monotonic() - self._progress_at
        return view_health(
            loaded=self._loaded,
            unreadable=list(self._unreadable.values()),
            withheld=self.withheld,
            behind=behind,
            idle_s=idle,
            stale_after_s=self.stale_after_s,
        )

    # ----------------------------------------------------------------- reading the topic

    async def start(self, *, follow: bool = True) -> None:
        """Load everything up to the current end; with ``follow`` keep reading after."""
        # A record whose header name is not UTF-8 would otherwise stop every view for good.
        fetch_guard.install()
        consumer = AIOKafkaConsumer(
            **self._kafka.aiokafka_options(), enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        self._consumer = consumer
        try:
            try:
                assigned = await assign_whole_topic(consumer, self._topic)
            except LookupError:
                raise LookupError(
                    f"topic {self._topic} does not exist: run `govesb registry apply` first"
                ) from None
            self._end = await consumer.end_offsets(assigned)
            await asyncio.wait_for(self._read_until(consumer, self._end), self.LOAD_TIMEOUT_S)
        except BaseException:
            await self.stop()
            raise
        self._loaded = True
        self._progress_at = time.monotonic()
        if follow:
            self._task = asyncio.create_task(self._follow(consumer), name="registry-view")

    async def _read_until(self, consumer: AIOKafkaConsumer, end: dict[Any, int]) -> None:
        for partition, offset in end.items():
            while await consumer.position(partition) < offset:
                await self._poll(consumer, 500)
            self._position[partition] = await consumer.position(partition)

    async def _poll(self, consumer: AIOKafkaConsumer, timeout_ms: int) -> None:
        batches = await consumer.getmany(timeout_ms=timeout_ms)
        for partition, records in batches.items():
            for record in records:
                if record.key is not None:
                    self.apply(record.key.decode("utf-8", "replace"), record.value)
            if records:
                self._position[partition] = records[-1].offset + 1
                self._progress_at = time.monotonic()

    async def _check_end(self, consumer: AIOKafkaConsumer) -> None:
        """Where the topic ends now; caught up counts as progress."""
        partitions = list(self._end) or list(consumer.assignment())
        self._end = await asyncio.wait_for(consumer.end_offsets(partitions), self.END_CHECK_S)
        for partition in partitions:
            self._position[partition] = await consumer.position(partition)
        if all(self._position[p] >= end for p, end in self._end.items()):
            self._progress_at = time.monotonic()

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        checked = 0.0
        while True:
            try:
                await self._poll(consumer, 1000)
                if time.monotonic() - checked >= self.END_CHECK_S:
                    checked = time.monotonic()
                    await self._check_end(consumer)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the last view; health() turns stale if this persists
                log.exception("esb.registry: reading failed; retrying")
                await asyncio.sleep(1)

    async def stop(self) -> None:
        """Stop following and close the consumer."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


def grant_for(view: RegistryView, consumer: str, api_code: str) -> Grant | None:
    """The grant that lets ``consumer`` call ``api_code``, if any."""
    return next(
        (g for g in view.grants.values() if g.consumer == consumer and g.api_code == api_code),
        None,
    )


def service_of_type(view: RegistryView, type_name: str) -> tuple[ServiceRecord, str] | None:
    """The service whose request or response record ``type_name`` is, and which one."""
    for service in view.services.values():
        if service.request_type == type_name:
            return service, "request"
        if service.response_type == type_name:
            return service, "response"
    return None
