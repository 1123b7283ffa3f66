"""What the SDK's Requester makes of a reply record."""

from __future__ import annotations

from aiokafka import ConsumerRecord

from streams.client.requesting import read_reply


def _reply(value: bytes | None, **headers: str) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        "esb.reply.moh", 0, 7, 0, 0, b"id", value, None, 2, len(value or b""),
        [(name, text.encode()) for name, text in headers.items()],
    )  # fmt: skip


def test_an_answer_carries_the_granted_fields_and_whether_it_was_late() -> None:
    answer = read_reply(
        _reply(b'{"nin":"1","valid":true}', esb_status="answered", esb_late="1"), "rid"
    )
    assert (answer.success, answer.status, answer.body, answer.late) == (
        True, "answered", {"nin": "1", "valid": True}, True
    )  # fmt: skip
    assert answer.request_id == "rid"


def test_a_refusal_and_a_provider_error_say_why() -> None:
    refused = read_reply(
        _reply(None, esb_status="refused", esb_reason="no-grant", esb_detail="moh has none"), "r"
    )
    assert (refused.success, refused.status, refused.reason, refused.message, refused.body) == (
        False, "refused", "no-grant", "moh has none", None
    )  # fmt: skip
    failed = read_reply(
        _reply(b"", esb_status="provider-error", esb_reason="provider-unavailable",
               esb_message="no answer from the provider in time (HTTP 503)"), "r",
    )  # fmt: skip
    assert (failed.success, failed.reason, failed.late) == (False, "provider-unavailable", False)
    assert failed.message.endswith("(HTTP 503)")
