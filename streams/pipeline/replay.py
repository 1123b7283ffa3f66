"""Replays of events the bus failed to deliver to one agreement: the claim it signs. Pure.

When one agreement cannot be served (an ``internal`` failure), the pipeline copies the
ingress record to ``esb.rejected.<publisher>`` with a *replay claim*: the agreement's id and
the bus's signature over (publisher, event id, agreement, SHA-256 of the value). ``govesb
rejected replay`` sends the record back to ``esb.ingress.<publisher>`` with the claim; the
pipeline honours it only when the bus's own key signed it, and then delivers the event to
that agreement alone and lets it past the duplicate window (the event id was already seen,
at the first read). Without a valid claim a record is an ordinary ingress record.

A publisher can read its rejection topic, so it could copy a claim; all that buys it is one
more delivery of its own event, with the same id, to an agreement that should have had it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

from streams.contract.signing import KeyRing, PrivateKey, SigningError

REPLAY_FOR = "esb_replay_for"
REPLAY_KEY_ID = "esb_replay_keyid"
REPLAY_SIGNATURE = "esb_replay_sig"
REPLAY_HEADERS = (REPLAY_FOR, REPLAY_KEY_ID, REPLAY_SIGNATURE)
CLAIM_VERSION = "govesb-replay-v1"


def claim_bytes(publisher: str, event_id: str, agreement: str, value: bytes) -> bytes:
    """The exact bytes a replay claim's signature covers (a JSON array, like event signatures)."""
    text = json.dumps(
        [CLAIM_VERSION, publisher, event_id, agreement, hashlib.sha256(value).hexdigest()],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return text.encode("utf-8", "surrogatepass")


def replay_headers(
    key_id: str, key: PrivateKey, publisher: str, event_id: str, agreement: str, value: bytes
) -> tuple[tuple[str, bytes], ...]:
    """The headers that let ``agreement`` alone receive this event again, signed by the bus."""
    signature = key.sign(claim_bytes(publisher, event_id, agreement, value))
    return (
        (REPLAY_FOR, agreement.encode()),
        (REPLAY_KEY_ID, key_id.encode()),
        (REPLAY_SIGNATURE, signature.encode()),
    )


def replay_claim(
    headers: Iterable[tuple[str, bytes | None]],
    publisher: str,
    event_id: str,
    value: bytes,
    keyring: KeyRing,
    key_owners: Mapping[str, str],
    operator: str,
) -> str | None:
    """The agreement a replay claim names, if the bus (a key of ``operator``) signed it.

    The last occurrence of each header counts (the bus appends its own after the record's).
    None when there is no claim, or it is not the bus's: the record is then processed as any
    other, duplicate window included.
    """
    found: dict[str, bytes | None] = {k: v for k, v in headers if k in REPLAY_HEADERS}
    try:
        agreement = (found.get(REPLAY_FOR) or b"").decode()
        key_id = (found.get(REPLAY_KEY_ID) or b"").decode()
        signature = (found.get(REPLAY_SIGNATURE) or b"").decode("ascii")
    except UnicodeDecodeError:
        return None
    if not (agreement and key_id and signature) or key_owners.get(key_id) != operator:
        return None
    try:
        keyring.verify(key_id, claim_bytes(publisher, event_id, agreement, value), signature)
    except SigningError:
        return None
    return agreement
