"""The gateway's OpenAPI 3.1 document (served at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string"},
        "message": {"type": "string"},
        "field": {"type": "string"},
        "id": {
            "type": "string",
            "format": "uuid",
            "description": "with 503 broker_unavailable: the event's id (the one sent, or the "
            "one the gateway assigned); the event may be on the bus anyway, so resend with it "
            "(a GovESB push: the same signed push) and the pipeline keeps one",
        },
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": "refused",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


_SIGNED_REPLY = {
    "type": "object",
    "required": ["data", "signature"],
    "properties": {
        "data": {
            "type": "object",
            "required": ["success"],
            "properties": {
                "success": {"type": "boolean"},
                "requestId": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "esbBody": {
                    "description": "the answer, only the fields the caller's grant "
                    "shows (masked where it says)"
                },
                "message": {
                    "type": "string",
                    "description": "why not: "
                    "<reason code>: <detail>, e.g. timed-out: no answer to request "
                    "<requestId> within 10 s",
                },
            },
        },
        "signature": {
            "type": "string",
            "description": "ECDSA (base64 DER) by the gateway over the data text",
        },
    },
}
_SIGNED = {"application/json": {"schema": {"$ref": "#/components/schemas/SignedReply"}}}
_GOVESB_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"type": "object"}},
        "text/plain; charset=ISO-8859-1": {"schema": {"type": "string"}},
    },
}


def _request(summary: str, *, nida: bool) -> dict[str, Any]:
    description = (
        "The request is read and verified as a push is (ISO-8859-1 bodies, the caller's "
        "token inside the signed data), checked (api code served, the caller's grant, "
        "esbBody against the service's request record, the grant's rate), published to the "
        "bus, and the call is held until the answer comes back or the service's deadline "
        "passes. 200 whatever the answer: data.success says, data.message gives the reason "
        "code (unknown-api, no-grant, invalid-payload, rate-exceeded, timed-out, "
        "provider-error, ...). Authentication and format errors keep their status."
    )
    if nida:
        description += (
            " userId (the caller's own user) is required, signed, and never published; "
            'esbBody {"Payload": {...}} is read as its Payload.'
        )
    return {
        "summary": summary,
        "description": description,
        "security": [{"bearer": []}, {"rawToken": []}, {"apiKey": []}],
        "requestBody": _GOVESB_BODY,
        "responses": {
            "200": {"description": "the answer, or why there is none, signed", "content": _SIGNED},
            **_errors(400, 401, 413, 415, 429, 502, 503),
        },
    }


def _late_answer() -> dict[str, Any]:
    return {
        "summary": "A provider's late answer: {data: {success, esbBody, requestId}, signature}",
        "description": "Signed by the provider. The request must take late answers (its "
        "service's late_answers_s), have been routed to the caller, and not be past its time; "
        "the answer is published with the request's reply ticket and reaches the requester "
        "marked late.",
        "security": [{"bearer": []}, {"rawToken": []}, {"apiKey": []}],
        "requestBody": _GOVESB_BODY,
        "responses": {
            "202": {"description": "published; a signed ack", "content": _SIGNED},
            "403": {"description": "not the caller's request (bad-ticket)", "content": _SIGNED},
            "404": {"description": "no such request takes answers now", "content": _SIGNED},
            "410": {"description": "past the time answers were taken", "content": _SIGNED},
            **_errors(400, 401, 413, 415, 429, 502, 503),
        },
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "GovESB HTTP gateway", "version": "1.0.0"},
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "rawToken": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "engine paths only: the token without the Bearer prefix, as "
                "e-GA's Java connector 0.1.5 sends it",
            },
            "clientBasic": {"type": "http", "scheme": "basic"},
        },
        "schemas": {
            "Error": _ERROR,
            "SignedReply": _SIGNED_REPLY,
            "CloudEvent": {
                "type": "object",
                "required": ["specversion", "type", "source", "data"],
                "properties": {
                    "specversion": {"const": "1.0"},
                    "id": {"type": "string", "format": "uuid"},
                    "source": {
                        "type": "string",
                        "pattern": "^/institutions/[a-z][a-z0-9-]*/systems/",
                    },
                    "type": {"type": "string", "description": "event type (Avro full name)"},
                    "time": {"type": "string", "format": "date-time"},
                    "correlationid": {"type": "string"},
                    "data": {"description": "the payload, as the event type's schema says"},
                },
            },
        },
    },
    "paths": {
        "/oauth/token": {
            "post": {
                "summary": "OAuth2 client credentials token",
                "security": [{"clientBasic": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "required": ["grant_type"],
                                "properties": {"grant_type": {"const": "client_credentials"}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "a bearer token",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": [
                                        "access_token",
                                        "token_type",
                                        "expires_in",
                                        "scope",
                                    ],
                                    # GovESB's Java connector (0.1.5) fails on any other field.
                                    "additionalProperties": False,
                                    "properties": {
                                        "access_token": {"type": "string"},
                                        "token_type": {"const": "bearer"},
                                        "expires_in": {"type": "integer"},
                                        "scope": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    **_errors(400, 401, 413, 415, 429),
                },
            }
        },
        "/v1/events": {
            "post": {
                "summary": "Publish one CloudEvent (structured or binary JSON)",
                "security": [{"bearer": []}, {"apiKey": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/cloudevents+json": {
                            "schema": {"$ref": "#/components/schemas/CloudEvent"}
                        },
                        "application/json": {"schema": {"description": "the event data"}},
                    },
                },
                "responses": {
                    "202": {
                        "description": "acknowledged by the broker",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["id", "status"],
                                    "properties": {
                                        "id": {"type": "string"},
                                        "status": {"const": "accepted"},
                                    },
                                }
                            }
                        },
                    },
                    **_errors(400, 401, 403, 404, 413, 415, 429, 502, 503),
                },
            }
        },
        "/engine/esb/push-request": {
            "post": {
                "summary": "GovESB push: {data: {pushCode, esbBody}, signature}",
                "description": "The signature covers the exact bytes of data. A body that "
                "declares ISO-8859-1, or is not UTF-8, is read as ISO-8859-1 and verified over "
                "the UTF-8 form of its data (connector 0.1.5 signs UTF-8, sends ISO-8859-1). "
                "data.authorization, the caller's token inside the signed data, must be a live "
                "token of the caller and is never published.",
                "security": [{"bearer": []}, {"rawToken": []}, {"apiKey": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/plain; charset=ISO-8859-1": {"schema": {"type": "string"}},
                    },
                },
                "responses": {
                    "202": {
                        "description": "acknowledged; the body is a GovESB ack signed by the bus",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_errors(400, 401, 403, 404, 409, 413, 415, 429, 502, 503),
                },
            }
        },
        "/engine/esb/request": {
            "post": _request("GovESB request: {data: {apiCode, esbBody}, signature}", nida=False)
        },
        "/engine/esb/nida-request": {
            "post": _request(
                "GovESB request with userId: {data: {apiCode, userId, esbBody}, signature}",
                nida=True,
            )
        },
        "/engine/esb/async": {"post": _late_answer()},
        "/engine/esb/async-response": {"post": _late_answer()},
        "/health": {
            "get": {
                "summary": "component checks",
                "responses": {"200": {"description": "ok"}, "503": {"description": "degraded"}},
            }
        },
        "/metrics": {
            "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}
        },
    },
}
