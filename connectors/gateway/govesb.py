"""The GovESB push format: the exact ``data`` bytes, a push's identity, replays."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from connectors.gateway.errors import HttpError

GOVESB_NAMESPACE = uuid.UUID("6f1c2b1e-3c1a-4f7e-9b7d-0e2a6c9d4b11")
"""Event ids of pushes are uuid5 of their identity in this namespace."""


@dataclass
class ReplayWindow:
    """Signed pushes accepted within ``window_s``, oldest first, pruned from the front.

    Each check costs O(1) amortised however many pushes the window holds; past
    ``max_entries`` the oldest are forgotten first.
    """

    window_s: float = 86_400.0
    max_entries: int = 1_000_000
    _accepted: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def seen(self, digest: str, now: float) -> bool:
        """Whether ``digest`` was accepted within the window."""
        while self._accepted:
            oldest_at = next(iter(self._accepted.values()))
            if now - oldest_at < self.window_s and len(self._accepted) < self.max_entries:
                break
            self._accepted.popitem(last=False)
        return digest in self._accepted

    def add(self, digest: str, now: float) -> None:
        """Remember ``digest`` as accepted at ``now``."""
        self._accepted[digest] = now

    def discard(self, digest: str) -> None:
        """Forget ``digest`` (its request failed, so the client may send it again)."""
        self._accepted.pop(digest, None)


def exact_data(text: str) -> str:
    """The raw text of the ``data`` member, as GovESB verifiers cut it: between ``"data":``
    and ``,"signature"``."""
    start = text.find('"data":')
    end = text.rfind(',"signature"')
    if start < 0 or end < start:
        raise HttpError(400, "invalid_request", 'the body must be {"data":...,"signature":"..."}')
    return text[start + len('"data":') : end].strip()


def push_identity(data: bytes, signature: str) -> str:
    """What makes a signed push the same push: the data bytes and the signature's ``r``.

    The base64 text is not it: several texts decode to the same DER, and ``(r, n - s)``
    verifies as well as ``(r, s)``. ``r`` is fixed by the signer's nonce, so only the holder
    of the key can make another signature of the same data.
    """
    r, _ = decode_dss_signature(base64.b64decode(signature))  # it verified: well-formed
    return hashlib.sha256(data + b"\x00" + str(r).encode()).hexdigest()
