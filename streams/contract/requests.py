"""Requests and answers between institutions, as events on the bus (GovESB's ``apiCode``).

A request is an event on the requester's ingress topic whose ``ce_type`` is a service's
request record; ``ce_id`` is the request id and ``ce_subject`` repeats it (the Kafka key).
The pipeline checks it (signature, grant, schema, size, rate) and routes it, re-signed, to
``esb.request.<provider>`` with a **reply ticket**. The provider answers on its own ingress
topic: ``ce_type`` the service's response record, ``ce_correlationid`` the request id, the
ticket copied from the request. The pipeline checks the answer (the provider's signature,
the ticket, the schema), minimises it for the requester's grant and re-signs it to
``esb.reply.<requester>``.

Why a ticket, signed by the bus, rather than a table of open requests: every worker can
check any answer by itself, after a restart or a rebalance, with nothing shared between
workers; a provider cannot forge one (it would need the bus's key), cannot change whom it
names (the requester, the api code, the provider, the request id are all signed), and cannot
answer a request it never received (it has no ticket for it). A second answer to the same
request is refused as a duplicate by the pipeline's duplicate window, keyed on the request.

The answer's status (``esb_status``): ``answered`` (``success: true`` in GovESB terms),
``provider-error`` (the provider, or its connector on its behalf, says it could not answer;
``esb_reason`` and ``esb_message`` say why) and, from the bus itself, ``refused`` (the
request broke the contract: ``esb_reason``, ``esb_detail``).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum

from streams.contract.signing import KeyRing, PrivateKey

API_HEADER = "esb_api"
REQUESTER_HEADER = "esb_requester"
DEADLINE_HEADER = "esb_deadline"
TICKET_HEADER = "esb_ticket"
TICKET_SIG_HEADER = "esb_ticket_sig"
TICKET_KEY_HEADER = "esb_ticket_key"
STATUS_HEADER = "esb_status"
MESSAGE_HEADER = "esb_message"
LATE_HEADER = "esb_late"
TICKET_HEADERS = (TICKET_HEADER, TICKET_SIG_HEADER, TICKET_KEY_HEADER)

REQUEST_NAMESPACE = uuid.UUID("0b7e7d1c-58a2-4a3e-9b0b-5f1f2f8c9a61")
"""Ids the bus derives from a request id (answers, refusals) are uuid5 in this namespace."""

MAX_MESSAGE = 300
"""Longest ``esb_message`` (a provider's or a connector's explanation), in characters."""


class Status(StrEnum):
    """What an answer says (``esb_status``)."""

    ANSWERED = "answered"
    PROVIDER_ERROR = "provider-error"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Ticket:
    """What the bus vouches for about a request it routed: who asked whom, what, until when.

    ``deadline_ms``: when the requester stops waiting (the service's deadline);
    ``until_ms``: the last moment an answer is still taken (the deadline plus the service's
    ``late_answers_s``). Epoch milliseconds.
    """

    requester: str
    provider: str
    api_code: str
    request_id: str
    deadline_ms: int
    until_ms: int

    def text(self) -> bytes:
        """The signed bytes: compact JSON, keys sorted."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    def headers(self, key_id: str, key: PrivateKey) -> tuple[tuple[str, bytes], ...]:
        """The ticket as the headers of a routed request, signed by the bus's ``key``."""
        text = self.text()
        return (
            (TICKET_HEADER, text),
            (TICKET_SIG_HEADER, key.sign(text).encode()),
            (TICKET_KEY_HEADER, key_id.encode()),
        )

    def late(self, now: dt.datetime) -> bool:
        """Whether ``now`` is past the requester's deadline."""
        return now.timestamp() * 1000 > self.deadline_ms


class TicketError(ValueError):
    """A ticket that is absent, unreadable, or not signed by the bus."""


def header(headers: Iterable[tuple[str, bytes | None]], name: str) -> bytes | None:
    """The value of the first header called ``name``."""
    for key, value in headers:  # a loop, not next(generator): this runs several times an event
        if key == name:
            return value
    return None


def read_ticket(
    headers: Iterable[tuple[str, bytes | None]],
    keyring: KeyRing,
    bus_keys: Iterable[str],
) -> Ticket:
    """The ticket a record carries, if one of ``bus_keys`` signed it.

    Raises:
        TicketError: no ticket, a malformed one, or a signature that is not the bus's.
    """
    headers = list(headers)
    text, signature, key_id = (header(headers, name) for name in TICKET_HEADERS)
    if not text or not signature or not key_id:
        raise TicketError("no reply ticket: an answer must carry the request's esb_ticket headers")
    key_name = key_id.decode(errors="replace")
    if key_name not in set(bus_keys):
        raise TicketError(f"the ticket is signed with {key_name!r}, not a key of the bus")
    public_key = keyring.get(key_name)
    if public_key is None or not public_key.verify(text, signature.decode(errors="replace")):
        raise TicketError("the ticket's signature does not verify: it was not issued by the bus")
    try:
        fields = json.loads(text)
        ticket = Ticket(**fields)
    except (ValueError, TypeError) as error:
        raise TicketError(f"the ticket cannot be read: {type(error).__name__}") from None
    return ticket


def new_request_id() -> str:
    """A request id: a random UUID (GovESB shows it without dashes, ``uuid.hex``)."""
    return str(uuid.uuid4())


def govesb_request_id(request_id: str) -> str:
    """``request_id`` as GovESB clients and providers see it: 32 hex digits, no dashes."""
    return uuid.UUID(request_id).hex


def bus_request_id(text: str) -> str | None:
    """The bus's form of a GovESB ``requestId`` (dashed or not), or None if it is no UUID."""
    try:
        return str(uuid.UUID(text))
    except (ValueError, TypeError, AttributeError):
        return None


def answer_id(request_id: str) -> str:
    """The event id of the answer to ``request_id``: one per request, so an answer sent
    again (a connector's retry) is the same event."""
    return str(uuid.uuid5(REQUEST_NAMESPACE, f"answer:{request_id}"))


def refusal_id(request_id: str) -> str:
    """The event id of the bus's refusal of ``request_id``."""
    return str(uuid.uuid5(REQUEST_NAMESPACE, f"refusal:{request_id}"))
