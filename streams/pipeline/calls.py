"""The pipeline's records for requests and answers (the rules are in ``exchange``).

A routed request: the request re-signed by the bus, with its reply ticket, on
``esb.request.<provider>`` (and, for a service taking late answers over HTTP, the ticket on
``esb.tickets`` for the gateway's ``/engine/esb/async``). A refused request: the record on
``esb.rejected.<requester>`` with the reason, as for events, and a ``refused`` answer on
``esb.reply.<requester>`` so that a caller waiting for it learns why at once. An answer: the
answer minimised to the requester's grant, as JSON, re-signed by the bus on
``esb.reply.<requester>``. Each one has its audit record.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import TYPE_CHECKING

from streams.contract import topics
from streams.contract.envelope import JSON_CONTENT_TYPE, Envelope, format_time, source_for
from streams.contract.jsonavro import to_json_bytes
from streams.contract.reasons import MAX_DETAIL, EventError, Reason
from streams.contract.requests import (
    API_HEADER,
    DEADLINE_HEADER,
    LATE_HEADER,
    MESSAGE_HEADER,
    REQUESTER_HEADER,
    STATUS_HEADER,
    Status,
    Ticket,
    header,
    refusal_id,
)
from streams.pipeline.exchange import (
    RateGate,
    Services,
    ValidAnswer,
    ValidRequest,
    minimise_answer,
    type_of,
    validate_answer,
    validate_request,
)
from streams.pipeline.validation import OPERATOR, IngressRecord, publisher_of
from streams.registry.model import Grant
from streams.registry.view import ServiceRecord, service_of_type

if TYPE_CHECKING:
    from streams.pipeline.process import Outcome, Output, Pipeline

BUS_SYSTEM = "govesb"
# Refusals that tell a waiting caller nothing it should act on: the request was routed.
_SILENT = frozenset({Reason.DUPLICATE})


class Calls:
    """Requests and answers for one :class:`~streams.pipeline.process.Pipeline`."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.rates = RateGate()

    def kind_of(self, record: IngressRecord) -> tuple[ServiceRecord | None, str, str] | None:
        """``(service, "request" | "response", api code)`` if the record is a request (its
        ``ce_type`` is a service's request record, or it names an api code in ``esb_api``)
        or an answer; None for an event. The service is None for an api code nobody serves."""
        view = self.pipeline.view
        found = service_of_type(view, type_of(record)) if view.services else None
        if found is not None:
            return found[0], found[1], found[0].api_code
        named = header(record.headers, API_HEADER)
        if named is not None:
            api_code = named.decode(errors="replace")
            return view.services.get(api_code), "request", api_code
        return None

    def services(self) -> Services:
        """The live registry's services and grants."""
        view = self.pipeline.view
        return Services(view.services, view.grants)

    # ----------------------------------------------------------------- requests

    async def request(
        self, record: IngressRecord, service: ServiceRecord | None, api_code: str, now: dt.datetime
    ) -> Outcome:
        """One request: routed with its ticket, or refused to the requester."""
        pipeline = self.pipeline
        services = self.services()
        if service is None:
            error = EventError(Reason.UNKNOWN_API, f"no institution serves {api_code[:80]!r}")
            return self._refuse(record, api_code, error, now)
        try:
            writer = await pipeline.writer_of(record)
            call = validate_request(
                record, service, services, pipeline.directory(), writer, now, pipeline.limits
            )
            # A request id is the bus's, whoever sent it: one reused from another source
            # (an id a provider saw) would otherwise take over its ticket and answers.
            pipeline.recent.check("request", call.envelope.id.lower(), record.position, now)
            if not self.rates.admit(call.grant, now.timestamp()):
                raise EventError(
                    Reason.RATE_EXCEEDED,
                    f"{call.requester} is over {call.grant.rate_per_s:g} requests/s for "
                    f"{service.api_code} (grant {call.grant.id})",
                )
        except EventError as error:
            return self._refuse(record, api_code, error, now)
        return self._route(record, call, now)

    def _route(self, record: IngressRecord, call: ValidRequest, now: dt.datetime) -> Outcome:
        from streams.pipeline.process import Outcome, Output

        bus = self.pipeline.bus_key
        envelope, service = call.envelope, call.service
        asked_at = dt.datetime.fromisoformat(envelope.time.replace("Z", "+00:00"))
        deadline_ms = int(asked_at.timestamp() * 1000 + service.deadline_s * 1000)
        ticket = Ticket(
            requester=call.requester,
            provider=service.provider,
            api_code=service.api_code,
            request_id=envelope.id,
            deadline_ms=deadline_ms,
            until_ms=deadline_ms + int(service.late_answers_s * 1000),
        )
        value = record.value or b""
        signature = envelope.signature_by(bus.key, value)
        ticket_headers = ticket.headers(bus.key_id, bus.key)
        deadline = format_time(dt.datetime.fromtimestamp(deadline_ms / 1000, dt.UTC))
        headers = (
            *envelope.signed_headers(bus.key_id, signature),
            (API_HEADER, service.api_code.encode()),
            (REQUESTER_HEADER, call.requester.encode()),
            (DEADLINE_HEADER, deadline.encode()),
            ("esb_subscription", call.grant.id.encode()),
            *ticket_headers,
        )
        key = envelope.id.encode()
        outputs = [Output(topics.request(service.provider), key, value, headers)]
        if service.served_by == "http" and service.late_answers_s > 0:
            outputs.append(Output(topics.TICKETS, key, ticket_headers[0][1], ticket_headers))
        outputs.append(
            self.pipeline.audit_of(
                "requested", record, envelope, now, (service.provider,),
                subscription=call.grant.id, agreements=(call.grant.id,),
                detail=f"api {service.api_code}", subject=_key_of(call.payload, service),
            )
        )  # fmt: skip
        return Outcome(
            outputs, call.requester, envelope.type, None, (service.provider,),
            api=service.api_code, call="routed",
        )  # fmt: skip

    def _refuse(
        self, record: IngressRecord, api_code: str, error: EventError, now: dt.datetime
    ) -> Outcome:
        """The rejection as for any event, plus a ``refused`` answer for a waiting caller."""
        outcome = self.pipeline.reject(record, error, now)
        requester = publisher_of(record.topic)
        try:
            envelope: Envelope | None = Envelope.from_headers(record.headers)
        except EventError:
            envelope = None
        outputs = list(outcome.outputs)
        if (
            envelope is not None
            and error.reason not in _SILENT
            and requester in self.services().requesters()
        ):
            outputs.insert(
                0, self.refusal(requester, envelope.id, envelope.type, api_code, error, now)
            )
        return replace(outcome, outputs=outputs, api=api_code, call="refused")

    def refusal(
        self,
        requester: str,
        request_id: str,
        type_name: str,
        api_code: str,
        error: EventError,
        now: dt.datetime,
    ) -> Output:
        """A ``refused`` answer to ``request_id`` on ``esb.reply.<requester>``, signed by the
        bus, with no value."""
        from streams.pipeline.process import Output

        bus = self.pipeline.bus_key
        envelope = Envelope(
            id=refusal_id(request_id),
            source=source_for(OPERATOR, BUS_SYSTEM),
            type=type_name,
            time=format_time(now),
            subject=request_id,
            correlation_id=request_id,
        )
        signature = envelope.signature_by(bus.key, b"")
        headers = (
            *envelope.signed_headers(bus.key_id, signature),
            (API_HEADER, api_code.encode()),
            (STATUS_HEADER, str(Status.REFUSED).encode()),
            ("esb_reason", str(error.reason).encode()),
            ("esb_detail", error.detail[:MAX_DETAIL].encode()),
        )
        return Output(topics.reply(requester), request_id.encode(), None, headers)

    # ----------------------------------------------------------------- answers

    async def answer(
        self, record: IngressRecord, service: ServiceRecord, now: dt.datetime
    ) -> Outcome:
        """One answer: minimised and re-signed to the requester, or refused to the provider."""
        pipeline = self.pipeline
        try:
            writer = await pipeline.writer_of(record)
            answer = validate_answer(
                record, service, pipeline.directory(), writer, now, pipeline.limits
            )
            # One answer per request; a provider's error (its connector gave up at the
            # deadline) may still be followed by its late answer (/engine/esb/async).
            kind = "answer" if answer.status is Status.ANSWERED else "answer-error"
            pipeline.recent.check(
                f"{kind}:{answer.provider}", answer.ticket.request_id, record.position, now
            )
        except EventError as error:
            outcome = pipeline.reject(record, error, now)
            return replace(outcome, api=service.api_code, call="answer-refused")
        grant = self.services().grant(answer.ticket.requester, service.api_code)
        if grant is None:  # the grant was withdrawn while the request was out
            withdrawn = EventError(
                Reason.NO_GRANT,
                f"{answer.ticket.requester} no longer has a grant for {service.api_code}",
            )
            outcome = pipeline.reject(record, withdrawn, now)
            refusal = self.refusal(
                answer.ticket.requester, answer.ticket.request_id, service.request_type,
                service.api_code, withdrawn, now,
            )  # fmt: skip
            return replace(
                outcome, outputs=[refusal, *outcome.outputs], api=service.api_code,
                call="answer-refused",
            )  # fmt: skip
        return self._pass_on(record, answer, grant, now)

    def _pass_on(
        self, record: IngressRecord, answer: ValidAnswer, grant: Grant, now: dt.datetime
    ) -> Outcome:
        from streams.pipeline.process import Outcome, Output

        grant_id = grant.id
        bus = self.pipeline.bus_key
        envelope, ticket = answer.envelope, answer.ticket
        value = (
            to_json_bytes(minimise_answer(answer.payload, grant))
            if answer.payload is not None
            else b""
        )
        signature = envelope.signature_by(bus.key, value)
        late = ticket.late(now)
        headers = [
            *envelope.signed_headers(bus.key_id, signature, JSON_CONTENT_TYPE),
            (API_HEADER, answer.service.api_code.encode()),
            (STATUS_HEADER, str(answer.status).encode()),
            ("esb_subscription", grant_id.encode()),
        ]
        if answer.reason is not None:
            headers.append(("esb_reason", str(answer.reason).encode()))
        if answer.message:
            headers.append((MESSAGE_HEADER, answer.message.encode()))
        if late:
            headers.append((LATE_HEADER, b"1"))
        reply = Output(
            topics.reply(ticket.requester), ticket.request_id.encode(), value, tuple(headers)
        )
        audit = self.pipeline.audit_of(
            "answered" if answer.status is Status.ANSWERED else "answer-failed",
            record, envelope, now, (ticket.requester,),
            reason=answer.reason, subscription=grant_id, agreements=(grant_id,),
            detail=f"api {answer.service.api_code}, request {ticket.request_id}"
            + (", late" if late else ""),
            subject=_key_of(answer.payload, answer.service),
        )  # fmt: skip
        asked_ms = ticket.deadline_ms - answer.service.deadline_s * 1000
        return Outcome(
            [reply, audit], answer.provider, envelope.type, None, (ticket.requester,),
            api=answer.service.api_code,
            call="answered" if answer.status is Status.ANSWERED else "provider-error",
            round_trip_s=max(0.0, now.timestamp() - asked_ms / 1000),
        )  # fmt: skip


def _key_of(payload: dict[str, object] | None, service: ServiceRecord) -> str | None:
    """The business key a request or answer is about (the service's ``key`` field)."""
    value = (payload or {}).get(service.key) if service.key else None
    return str(value) if value not in (None, "") else None
