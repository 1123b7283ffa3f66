"""What the provider connector says and hears, as pure functions: GovESB provider format.

The bus calls a legacy API with ``{"data":{"esbBody":{…},"requestId":"<dashless>",
"apiCode":"<code>"},"signature":"…"}``, signed by the bus's delivery key over the exact
``data`` text (:func:`connectors.gateway.govesb.reply_text`, which every GovESB library
re-serializes to itself, so a provider verifies it whichever library it uses). The provider
answers ``{"data":{"success":…,"esbBody":{…},"message":"…"},"signature":"…"}`` signed with its
own key over the exact ``data`` bytes it sent. The answer event itself is
:func:`streams.client.answering.answer_event`'s. No I/O here: the connector
(:mod:`connectors.provider.connector`) does the sending and calls these.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from connectors.gateway.errors import HttpError
from connectors.gateway.govesb import read_request, signed_reply
from connectors.http_sink.delivery import HttpRequest
from streams.contract import requests
from streams.contract.reasons import Reason
from streams.contract.requests import Status
from streams.contract.signing import PrivateKey, PublicKey


@dataclass(frozen=True, slots=True)
class ProviderAnswer:
    """What the provider's HTTP answer means: ``body`` (its ``esbBody``) when it answered,
    else the reason and a short message (``status`` provider-error)."""

    status: Status
    body: dict[str, Any] | None = None
    reason: Reason | None = None
    message: str = ""


def failure(reason: Reason, message: str) -> ProviderAnswer:
    """A provider-error answer for ``reason``, its message cut to the contract's length."""
    return ProviderAnswer(Status.PROVIDER_ERROR, None, reason, message[: requests.MAX_MESSAGE])


def provider_request(
    esb_body: Mapping[str, Any], request_id: str, api_code: str, key: PrivateKey
) -> HttpRequest:
    """The POST to the provider: the request in GovESB provider format, signed by the bus.

    Raises:
        UnportableReply: a body no GovESB client would re-serialize to the signed text.
    """
    dashless = requests.govesb_request_id(request_id)
    data = {"esbBody": dict(esb_body), "requestId": dashless, "apiCode": api_code}
    return HttpRequest(
        signed_reply(data, key).encode(),
        {"Content-Type": "application/json", "Idempotency-Key": dashless},
    )


def read_answer(raw: bytes, charset: str | None, keys: Iterable[PublicKey]) -> ProviderAnswer:
    """The provider's answer ``raw`` (sent with ``charset``), verified with ``keys`` (the
    provider's current keys) over the exact bytes of its ``data``."""
    try:
        document = json.loads(raw.decode(charset or "utf-8", errors="replace"))
    except ValueError:
        return failure(Reason.INVALID_ANSWER, "the answer is not JSON")
    if not isinstance(document, dict) or "data" not in document:
        return failure(Reason.INVALID_ANSWER, 'the answer is not {"data":…,"signature":"…"}')
    if not isinstance(document.get("signature"), str) or not document["signature"]:
        return failure(Reason.PROVIDER_SIGNATURE, "the answer is not signed")
    try:
        signed = read_request(raw, charset)
    except HttpError as error:
        return failure(Reason.INVALID_ANSWER, f"the answer cannot be read: {error.message}")
    if not any(key.verify(signed.data_bytes, signed.signature) for key in keys):
        return failure(
            Reason.PROVIDER_SIGNATURE,
            "the answer's signature does not verify with any current key of the provider",
        )
    data = signed.data
    if not isinstance(data, dict) or not isinstance(data.get("success"), bool):
        return failure(Reason.INVALID_ANSWER, "data.success must be true or false")
    message = data.get("message")
    message = message if isinstance(message, str) else ""
    if not data["success"]:
        return failure(Reason.PROVIDER_ERROR, message or "the provider could not answer")
    body = data.get("esbBody")
    if not isinstance(body, dict):
        return failure(Reason.INVALID_ANSWER, "data.esbBody must be an object")
    return ProviderAnswer(Status.ANSWERED, body, None, message[: requests.MAX_MESSAGE])
