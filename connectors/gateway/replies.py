"""What a GovESB caller is sent for an answer, a refusal or a timeout; JSON requests and
answers against their records; the metrics of the request routes. Pure, but for metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from connectors.gateway.calls import Answer, HeldCalls
from streams.contract.catalog import EventType
from streams.contract.codec import schema_errors
from streams.contract.jsonavro import JsonAvroError, from_json
from streams.contract.reasons import Reason
from streams.contract.requests import Status, govesb_request_id

UNKNOWN_API = "?"
"""The ``api`` label of requests for an api code no service has (no label per invented code)."""


class SchemaViolation(ValueError):
    """JSON that the record's schema does not take; ``field`` names where."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def avro_record(event_type: EventType, data: Any, data_field: str) -> dict[str, Any]:
    """``data`` as the record ``event_type`` holds, validated against its schema.

    Raises:
        SchemaViolation: the message names the field, never the value.
    """
    if data is None:
        raise SchemaViolation(f"{data_field} is required", data_field)
    try:
        record = from_json(event_type.schema, data)
        errors = schema_errors(record, event_type.parsed)
    except JsonAvroError as error:
        raise SchemaViolation(str(error), f"{data_field}.{error.path}") from None
    except (ValueError, TypeError) as error:
        raise SchemaViolation(
            f"{data_field} does not match {event_type.name}: {type(error).__name__}", data_field
        ) from None
    if errors is not None:
        first = errors[0] if errors else None
        where = str(getattr(first, "field", "") or event_type.name)
        if where == event_type.name or where.startswith(f"{event_type.name}."):
            where = data_field + where[len(event_type.name) :]  # where the caller put it
        expected = getattr(first, "schema", "the schema")
        raise SchemaViolation(f"{where}: expected {expected}", where)
    if not isinstance(record, dict):
        raise SchemaViolation(f"{data_field} must be an object", data_field)
    return record


def answer_data(answer: Answer, request_id: str) -> dict[str, Any]:
    """The ``data`` of the reply to the caller for ``answer``."""
    shown = govesb_request_id(request_id)
    if answer.status is Status.ANSWERED:
        return {"success": True, "requestId": shown, "esbBody": answer.body}
    reason = answer.reason or str(
        Reason.PROVIDER_ERROR if answer.status is Status.PROVIDER_ERROR else answer.status
    )
    message = f"{reason}: {answer.message}" if answer.message else reason
    return {"success": False, "requestId": shown, "message": message}


def refusal_data(reason: Reason | str, detail: str, request_id: str | None) -> dict[str, Any]:
    """The ``data`` of a refusal: ``success: false`` and ``<reason>: <detail>``."""
    data: dict[str, Any] = {"success": False}
    if request_id is not None:
        data["requestId"] = govesb_request_id(request_id)
    data["message"] = f"{reason}: {detail}"
    return data


def timed_out_data(request_id: str, deadline_s: float) -> dict[str, Any]:
    """The ``data`` of a call whose answer did not come within the deadline."""
    shown = govesb_request_id(request_id)
    return refusal_data(
        Reason.TIMED_OUT, f"no answer to request {shown} within {deadline_s:g} s", request_id
    )


def outcome_of(answer: Answer) -> str:
    """The ``outcome`` label of ``answer``."""
    return {
        Status.ANSWERED: "answered",
        Status.PROVIDER_ERROR: "provider_error",
        Status.REFUSED: "refused",
    }[answer.status]


def request_payload(data: Mapping[str, Any], *, nida: bool) -> Any:
    """The request record's JSON in a request's data: ``esbBody`` (for ``/nida-request``,
    ``esbBody.Payload`` when the body is that wrapper, as GovESB's NIDA helpers send it)."""
    body = data.get("esbBody")
    if nida and isinstance(body, dict) and set(body) == {"Payload"}:
        body = body["Payload"]
        if isinstance(body, dict) and set(body) == {"NIN"}:  # the helpers' own key
            return {"nin": body["NIN"]}
    return body


class RequestMetrics:
    """Per api code: requests by outcome, round trips, calls held now."""

    def __init__(self, registry: Any, calls: HeldCalls) -> None:
        self.requests = Counter(
            "govesb_gateway_api_requests", "GovESB requests by api code and outcome.",
            ["api", "outcome"], registry=registry,
        )  # fmt: skip
        self.round_trip = Histogram(
            "govesb_gateway_request_seconds",
            "From a request's arrival to its answer (or the deadline), by api code.",
            ["api"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.held = Gauge(
            "govesb_gateway_held_calls", "Requests waiting for their answer on this replica.",
            registry=registry,
        )  # fmt: skip
        self.held.set_function(lambda: len(calls))
        self.late_answers = Counter(
            "govesb_gateway_late_answers", "Late answers (/engine/esb/async) by api code and "
            "outcome (published, refused).", ["api", "outcome"], registry=registry,
        )  # fmt: skip
