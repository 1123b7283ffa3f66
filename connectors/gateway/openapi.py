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
