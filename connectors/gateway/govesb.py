"""The GovESB format as GovESB's client libraries really speak it.

Requests: ``{"data":{...},"signature":"..."}`` whose signature covers the exact bytes of
``data``; the bodies of e-GA's Java connector 0.1.5 in ISO-8859-1 while it signed their UTF-8
form; the caller's token inside the signed data (stripped before anything is published).
Replies: one serialization (:func:`reply_text`) that the four ways clients verify all accept.
A push's identity, and the window of pushes already accepted.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import math
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from connectors.gateway.errors import HttpError
from connectors.gateway.strict_json import NOT_DATA, parse_strict
from streams.contract.signing import PrivateKey

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
    and ``,"signature"`` (or ``, "signature"``: Python's ``json.dumps`` with its default
    separators, as the ``govesb`` package on PyPI writes a push)."""
    start = text.find('"data":')
    end = text.rfind(',"signature"')
    if end < 0:
        end = text.rfind(', "signature"')
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


# --------------------------------------------------------------------------- requests

TOKEN_MEMBER = "authorization"  # noqa: S105 - a member name, not a secret
"""Where e-GA's Java connector 0.1.5 puts the caller's token inside the signed data (its
``esbRequest`` and NIDA request; key order apiCode, pushCode, userId, authorization, esbBody,
requestId, nulls dropped). It is checked, then never published."""


def declares_latin1(charset: str | None) -> bool:
    """Whether a Content-Type ``charset`` names ISO-8859-1 (under any of its aliases)."""
    if not charset:
        return False
    try:
        return codecs.lookup(charset).name == "iso8859-1"
    except LookupError:
        return False


@dataclass(frozen=True)
class SignedRequest:
    """A GovESB request as read from its body: the signed data bytes (UTF-8), what they
    parse to, the signature text, and how the body's bytes were read.

    ``latin1`` is ``"declared"`` (the Content-Type said ISO-8859-1), ``"undeclared"`` (the
    body is not UTF-8: connector 0.1.5 sends ISO-8859-1 under a bare ``application/json``),
    or ``""`` (UTF-8). Read as ISO-8859-1, the data text is re-encoded as UTF-8, which is
    what that connector signed; the signature must verify over those bytes.
    """

    data_bytes: bytes
    data: Any
    signature: str
    latin1: str = ""

    def unverified(self) -> HttpError:
        """The refusal of a request whose signature does not verify over ``data_bytes``.

        A body that is not UTF-8 and carries no well-formed signature is not a signed
        ISO-8859-1 request: it is refused as any body that is not UTF-8 (400). With a
        well-formed one it was, most likely, connector 0.1.5's: 401, and the message says
        how it was read (a character outside ISO-8859-1 reaches the gateway as ``?``).
        """
        if self.latin1 == "undeclared":
            if not _well_formed(self.signature):
                return HttpError(
                    400, "invalid_json",
                    "the body is not valid JSON (UTF-8, no duplicate keys, no lone surrogates)",
                )  # fmt: skip
            return HttpError(
                401, "invalid_signature",
                "the signature does not verify over the data bytes (the body is not UTF-8: "
                "it was read as ISO-8859-1 and verified over its UTF-8 form)",
            )  # fmt: skip
        return HttpError(
            401, "invalid_signature", "the signature does not verify over the data bytes"
        )


def _well_formed(signature: str) -> bool:
    """Whether ``signature`` is base64 of a DER ECDSA signature (whether or not it verifies)."""
    try:
        decode_dss_signature(base64.b64decode(signature, validate=True))
    except ValueError:  # binascii.Error is one
        return False
    return True


def read_request(raw: bytes, charset: str | None) -> SignedRequest:
    """The signed data of a GovESB request body ``raw`` sent with ``charset``.

    UTF-8 unless the body declares ISO-8859-1 or is not UTF-8: then each byte is its Latin-1
    character and the data text is re-encoded as UTF-8. Only one reading is ever tried, and
    what is published is what that reading's signature covers, so no reading can let an
    unsigned variant through. 400 for anything that is not ``{"data":...,"signature":"..."}``.
    """
    latin1 = "declared" if declares_latin1(charset) else ""
    if not latin1:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            latin1 = "undeclared"
    if latin1:
        raw = raw.decode("latin-1").encode("utf-8")
    document = parse_strict(raw)  # UTF-8 JSON, no duplicate keys: 400 otherwise
    if not isinstance(document, dict) or "data" not in document or "signature" not in document:
        raise HttpError(400, "invalid_request", 'expected {"data": {...}, "signature": "..."}')
    signature = document["signature"]
    if not isinstance(signature, str):
        raise HttpError(
            400, "invalid_request", "signature must be a base64 string", field="signature"
        )
    data_bytes = exact_data(raw.decode("utf-8")).encode()
    try:
        data = parse_strict(data_bytes)
    except HttpError:
        data = NOT_DATA
    if data != document["data"]:  # the cut is not the data member: nothing else is signed
        raise HttpError(400, "invalid_request", 'the body must be {"data":...,"signature":"..."}')
    return SignedRequest(data_bytes, data, signature, latin1)


def token_in_data(data: Any) -> str | None:
    """The token a client put inside the signed data (``Bearer `` prefix or not), if any;
    400 if that member is there but not a string."""
    if not isinstance(data, dict) or TOKEN_MEMBER not in data:
        return None
    token = data[TOKEN_MEMBER]
    if not isinstance(token, str):
        raise HttpError(
            400, "invalid_request", "data.authorization must be a string",
            field="data.authorization",
        )  # fmt: skip
    return token[7:].strip() if token.lower().startswith("bearer ") else token.strip()


def without_token(data: Any) -> Any:
    """``data`` without the caller's token: what may be encoded, published or logged."""
    if isinstance(data, dict) and TOKEN_MEMBER in data:
        return {k: v for k, v in data.items() if k != TOKEN_MEMBER}
    return data


# --------------------------------------------------------------------------- replies

MAX_SAFE_INTEGER = 2**53 - 1
"""Past it JavaScript's numbers lose digits, and Node's ``JSON.stringify`` re-prints others."""
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                  "\t": "\\t"}  # fmt: skip


class UnportableReply(ValueError):
    """A reply value whose text the GovESB clients would re-serialize differently."""


def _array_index(key: str) -> int | None:
    # ECMAScript orders an object's array-index keys first, ascending, whatever the text.
    if key.isascii() and key.isdigit() and (key == "0" or key[0] != "0"):
        index = int(key)
        if index < 2**32 - 1:
            return index
    return None


def _string(text: str, path: str) -> str:
    out = ['"']
    for char in text:
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif char < " ":
            # Jackson writes \u001F, Node and Python \u001f: no text verifies in all of them.
            raise UnportableReply(f"{path}: control character U+{ord(char):04X}")
        elif "\ud800" <= char <= "\udfff":
            raise UnportableReply(f"{path}: lone surrogate")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _number(value: int | float, path: str) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnportableReply(f"{path}: {value} is not JSON")
        if value.is_integer():
            value = int(value)  # 100.0: Java prints 100.0, Node 100; 100 is 100 everywhere
        elif 1e-3 <= abs(value) < 1e7:
            return repr(value)  # shortest round trip, no exponent in Java, Node or Python
        else:
            raise UnportableReply(f"{path}: {value!r} is printed with an exponent by some")
    if abs(value) > MAX_SAFE_INTEGER:
        raise UnportableReply(f"{path}: {value} is beyond JavaScript's exact integers")
    return str(value)


def _value(value: Any, path: str) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value, path)
    if isinstance(value, str):
        return _string(value, path)
    if isinstance(value, Mapping):
        keys = list(value)
        if not all(isinstance(key, str) for key in keys):
            raise UnportableReply(f"{path}: object keys must be strings")
        indexed = sorted((i, k) for k in keys if (i := _array_index(k)) is not None)
        ordered = [k for _, k in indexed] + [k for k in keys if _array_index(k) is None]
        members = (f"{_string(k, path)}:{_value(value[k], f'{path}.{k}')}" for k in ordered)
        return "{" + ",".join(members) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_value(v, f"{path}[{i}]") for i, v in enumerate(value)) + "]"
    raise UnportableReply(f"{path}: {type(value).__name__} is not JSON")


def reply_text(data: Mapping[str, Any]) -> str:
    """The text of a reply's ``data`` that every GovESB client re-serializes to itself.

    Clients verify the bus's signature over: Java (connector 0.1.5, GovEsbHelper) Jackson's
    compact re-serialization in insertion order with raw UTF-8; Node ``JSON.stringify(
    JSON.parse(body).data)``; Python ``json.dumps(data, separators=(",", ":"))``; PHP the raw
    text from the first ``{`` after ``data`` to the last ``,"signature"``. So: compact, keys in
    order (array-index keys such as ``"7"`` first and ascending, as JavaScript orders them),
    ``"``, ``\\``, ``\\b\\f\\n\\r\\t`` escaped and nothing else, integral numbers as integers,
    other numbers only where no client prints an exponent (1e-3 to 1e7).

    Non-ASCII text is written as raw UTF-8: Java, Node and PHP verify it; a Python client
    that re-serializes with ASCII escapes does not (``\\u00e9`` escapes would satisfy Python
    and PHP but neither Java nor Node, the clients most deployed). ASCII-only data verifies
    in all four.

    Raises:
        UnportableReply: for a value no text of which verifies in Java, Node and Python alike
            (other control characters, integers past 2**53 - 1, numbers needing an exponent,
            NaN, non-JSON types).
    """
    return _value(data, "data")


def signed_reply(data: Mapping[str, Any], key: PrivateKey) -> str:
    """``{"data":...,"signature":"..."}``, data first, signed by ``key`` over
    :func:`reply_text`'s UTF-8 bytes."""
    text = reply_text(data)
    return f'{{"data":{text},"signature":"{key.sign(text.encode())}"}}'
