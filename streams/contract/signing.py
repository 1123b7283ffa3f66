"""ECDSA/SHA-256 signatures of bus events, and the institutions' keys that make them.

An event is signed over :func:`canonical_bytes` of its id, source, type, time and the SHA-256
of its payload bytes. Signatures are base64 (standard alphabet) of the DER-encoded ECDSA
signature, as Java's ``SHA256withECDSA`` produces them. Keys are EC keys on any curve the key
itself names; GovESB keys in use are secp256k1 (signed and verified through libsecp256k1 via
coincurve, about 11x faster than OpenSSL for that curve) and P-256 (through ``cryptography``).

Keys travel as PEM or as GovESB-style base64 DER without headers (PKCS#8 for private keys,
SubjectPublicKeyInfo for public keys). No error message here ever carries key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re

import coincurve
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

__all__ = [
    "BadSignatureError",
    "KeyFormatError",
    "KeyRing",
    "PrivateKey",
    "PublicKey",
    "SigningError",
    "UnknownKeyError",
    "canonical_bytes",
    "generate_private_key",
    "key_id_for",
    "load_private_key",
    "load_public_key",
    "sign_event",
    "verify_event",
]

CANONICAL_VERSION = "govesb-sig-v1"

_SECP256K1 = "secp256k1"
# Order of the secp256k1 group. libsecp256k1 accepts only signatures with s <= n/2.
_SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_SECP256K1_HALF_ORDER = _SECP256K1_ORDER // 2

_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "secp256k1": ec.SECP256K1,
    "p-256": ec.SECP256R1,
    "secp256r1": ec.SECP256R1,
    "prime256v1": ec.SECP256R1,
}

_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_WHITESPACE = re.compile(rb"\s+")


class SigningError(Exception):
    """Base of every error raised by this module."""


class UnknownKeyError(SigningError):
    """No public key is registered under the key id an event names."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no public key is registered under key id {key_id!r}")
        self.key_id = key_id


class BadSignatureError(SigningError):
    """A signature does not verify (wrong key, altered event, or malformed signature)."""


class KeyFormatError(SigningError):
    """Text that should hold a key is not a usable EC key."""


def canonical_bytes(
    event_id: str, source: str, event_type: str, time: str, payload: bytes
) -> bytes:
    """The exact bytes an event's signature covers.

    A JSON array, so that no attribute can run into the next one whatever characters it
    holds, with the SHA-256 of the payload rather than the payload itself.
    The trace context headers (``ce_traceparent``, ``traceparent``, …) are not covered, on
    purpose: they are diagnostics that every hop rewrites (:mod:`streams.contract.tracecontext`).

    Args:
        event_id: The CloudEvents ``id``.
        source: The CloudEvents ``source``.
        event_type: The CloudEvents ``type``.
        time: The CloudEvents ``time``, exactly as carried in the header.
        payload: The payload bytes exactly as carried on the wire.

    Returns:
        UTF-8 bytes of ``["govesb-sig-v1", id, source, type, time, sha256-hex(payload)]``.

    Raises:
        SigningError: An attribute is not valid Unicode text (it holds a lone surrogate).
    """
    text = json.dumps(
        [
            CANONICAL_VERSION,
            event_id,
            source,
            event_type,
            time,
            hashlib.sha256(payload).hexdigest(),
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise SigningError("an event attribute is not valid Unicode text") from None


class PublicKey:
    """An EC public key that verifies ECDSA/SHA-256 signatures.

    Parsed once: the key object (and, for secp256k1, the libsecp256k1 key) lives in the
    instance, so keep instances around (e.g. in a :class:`KeyRing`) rather than re-loading.

    Attributes:
        curve: The curve's standard name, e.g. ``"secp256k1"`` or ``"secp256r1"``.
    """

    __slots__ = ("_fast", "_key", "_spki_der", "curve")

    def __init__(self, key: ec.EllipticCurvePublicKey) -> None:
        """Wrap a ``cryptography`` EC public key.

        Args:
            key: The key to wrap.
        """
        self._key = key
        self.curve: str = key.curve.name
        self._spki_der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._fast: coincurve.PublicKey | None = None
        if self.curve == _SECP256K1:
            self._fast = coincurve.PublicKey(
                key.public_bytes(
                    serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
                )
            )

    def verify(self, data: bytes, signature_b64: str) -> bool:
        """Whether ``signature_b64`` is a valid signature of ``data`` by this key.

        Args:
            data: The signed bytes.
            signature_b64: Base64 (standard alphabet) of the DER-encoded ECDSA signature.

        Returns:
            True if the signature verifies; False otherwise, including when the signature is
            not valid base64 or not valid DER. Never raises for a malformed signature.
        """
        try:
            signature = base64.b64decode(signature_b64, validate=True)
        except (ValueError, TypeError):
            return False
        if self._fast is not None:
            return _verify_secp256k1(self._fast, data, signature)
        try:
            self._key.verify(signature, data, _ECDSA_SHA256)
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_pem(self) -> str:
        """The key as a PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo)."""
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def to_base64_der(self) -> str:
        """The key as base64 of its SubjectPublicKeyInfo DER, without PEM headers (GovESB style)."""
        return base64.b64encode(self._spki_der).decode("ascii")

    def fingerprint(self) -> str:
        """Hex SHA-256 of the key's SubjectPublicKeyInfo DER."""
        return hashlib.sha256(self._spki_der).hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return self._spki_der == other._spki_der

    def __hash__(self) -> int:
        return hash(self._spki_der)

    def __repr__(self) -> str:
        return f"PublicKey(curve={self.curve!r}, fingerprint={self.fingerprint()[:12]!r})"


class PrivateKey:
    """An institution's (or the bus's) EC private key, which signs with ECDSA/SHA-256.

    ``repr`` shows only the curve and the public key's fingerprint, never the secret.

    Attributes:
        curve: The curve's standard name, e.g. ``"secp256k1"`` or ``"secp256r1"``.
    """

    __slots__ = ("_fast", "_key", "_public", "curve")

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        """Wrap a ``cryptography`` EC private key.

        Args:
            key: The key to wrap.
        """
        self._key = key
        self.curve: str = key.curve.name
        self._public = PublicKey(key.public_key())
        self._fast: coincurve.PrivateKey | None = None
        if self.curve == _SECP256K1:
            secret = key.private_numbers().private_value.to_bytes(32, "big")
            self._fast = coincurve.PrivateKey(secret)

    def sign(self, data: bytes) -> str:
        """Sign ``data`` with ECDSA over its SHA-256.

        Args:
            data: The bytes to sign.

        Returns:
            Base64 (standard alphabet) of the DER-encoded signature.
        """
        if self._fast is not None:
            signature = self._fast.sign(data, hasher=_sha256)
        else:
            signature = self._key.sign(data, _ECDSA_SHA256)
        return base64.b64encode(signature).decode("ascii")

    def public_key(self) -> PublicKey:
        """The matching public key."""
        return self._public

    def to_pem(self) -> str:
        """The key as an unencrypted PKCS#8 PEM ``PRIVATE KEY``. Handle with care."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")

    def to_base64_der(self) -> str:
        """The key as base64 of unencrypted PKCS#8 DER, without headers. Handle with care."""
        der = self._key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return base64.b64encode(der).decode("ascii")

    def derive_key(self, purpose: bytes) -> bytes:
        """A 32-byte secret for ``purpose``, derived from this key (HKDF-SHA256).

        One-way: the derived secret can be handed to a process that must not sign (e.g. the
        audit index, to compute keyed hashes) without giving it the private key.
        """
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        scalar = self._key.private_numbers().private_value
        secret = scalar.to_bytes((self._key.curve.key_size + 7) // 8, "big")
        return HKDF(hashes.SHA256(), 32, salt=None, info=purpose).derive(secret)

    def __repr__(self) -> str:
        return f"PrivateKey(curve={self.curve!r}, public={self._public.fingerprint()[:12]!r})"


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _verify_secp256k1(key: coincurve.PublicKey, data: bytes, signature: bytes) -> bool:
    # libsecp256k1 accepts only low-S signatures, but Java's SHA256withECDSA and OpenSSL
    # produce high-S ones half the time. (r, n - s) is the same signature, so normalise first.
    try:
        r, s = decode_dss_signature(signature)
    except ValueError:
        return False
    if not (0 < r < _SECP256K1_ORDER and 0 < s < _SECP256K1_ORDER):
        return False
    if s > _SECP256K1_HALF_ORDER:
        signature = encode_dss_signature(r, _SECP256K1_ORDER - s)
    try:
        return key.verify(signature, data, hasher=_sha256)
    except ValueError:
        return False


def _key_bytes(text: str | bytes) -> bytes:
    if isinstance(text, str):
        try:
            return text.encode("ascii")
        except UnicodeEncodeError:
            raise KeyFormatError("key text must be ASCII (PEM or base64 DER)") from None
    return bytes(text)


def _pem_label(data: bytes) -> bytes | None:
    match = _PEM_LABEL.search(data)
    return match.group(1) if match else None


def _base64_der(data: bytes, what: str) -> bytes:
    try:
        der = base64.b64decode(_WHITESPACE.sub(b"", data), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(f"{what} is neither PEM nor base64 DER") from None
    if not der:
        raise KeyFormatError(f"{what} is empty")
    return der


def load_private_key(text: str | bytes) -> PrivateKey:
    """Parse an EC private key.

    Args:
        text: PEM (PKCS#8 ``PRIVATE KEY`` or SEC1 ``EC PRIVATE KEY``), or base64 of PKCS#8
            DER without headers; whitespace and newlines are ignored.

    Returns:
        The parsed key.

    Raises:
        KeyFormatError: The text is not an unencrypted EC private key. The message never
            repeats the text.
    """
    data = _key_bytes(text)
    label = _pem_label(data)
    # Errors from the parsers are dropped (``from None``): nothing about the secret leaves here.
    try:
        if label is not None:
            if label not in (b"PRIVATE KEY", b"EC PRIVATE KEY", b"ENCRYPTED PRIVATE KEY"):
                raise KeyFormatError(
                    f"expected a PEM PRIVATE KEY or EC PRIVATE KEY, got {label.decode()}"
                )
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(
                _base64_der(data, "private key"), password=None
            )
    except TypeError:
        raise KeyFormatError("encrypted private keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFormatError("not a valid private key (PEM or base64 PKCS#8 DER)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFormatError(f"expected an EC private key, got {_algorithm(key)}")
    return PrivateKey(key)


def load_public_key(text: str | bytes) -> PublicKey:
    """Parse an EC public key.

    Args:
        text: PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo), or base64 of SubjectPublicKeyInfo DER
            without headers; whitespace and newlines are ignored.

    Returns:
        The parsed key.

    Raises:
        KeyFormatError: The text is not an EC public key.
    """
    data = _key_bytes(text)
    label = _pem_label(data)
    try:
        if label is not None:
            if label != b"PUBLIC KEY":
                raise KeyFormatError(f"expected a PEM PUBLIC KEY, got {label.decode()}")
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(_base64_der(data, "public key"))
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFormatError(
            "not a valid public key (PEM or base64 SubjectPublicKeyInfo DER)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise KeyFormatError(f"expected an EC public key, got {_algorithm(key)}")
    return PublicKey(key)


def _algorithm(key: object) -> str:
    # e.g. "RSAPrivateKey" -> "RSA"; the class name is all that is shown of the key.
    name = type(key).__name__.removesuffix("PrivateKey").removesuffix("PublicKey")
    return f"a key of type {name or type(key).__name__}"


def generate_private_key(curve: str = "secp256k1") -> PrivateKey:
    """Generate a new EC private key.

    Args:
        curve: ``"secp256k1"`` or ``"P-256"`` (aliases ``"secp256r1"``, ``"prime256v1"``);
            case-insensitive.

    Returns:
        The new key.

    Raises:
        KeyFormatError: The curve is not one of those.
    """
    curve_type = _CURVES.get(curve.lower())
    if curve_type is None:
        raise KeyFormatError(f"unsupported curve {curve!r}; use secp256k1 or P-256")
    return PrivateKey(ec.generate_private_key(curve_type()))


def key_id_for(institution: str, public_key: PublicKey) -> str:
    """The key id under which an institution registers ``public_key``.

    Args:
        institution: The institution's id.
        public_key: The key.

    Returns:
        ``<institution>-<first 12 hex digits of the key's fingerprint>``.
    """
    return f"{institution}-{public_key.fingerprint()[:12]}"


class KeyRing:
    """The public keys the bus trusts, by key id."""

    def __init__(self) -> None:
        """Start with no keys."""
        self._keys: dict[str, PublicKey] = {}

    def add(self, key_id: str, key: PublicKey) -> None:
        """Trust ``key`` under ``key_id``, replacing any key already under that id.

        Args:
            key_id: The id events name in ``ce_sigkeyid``.
            key: The parsed public key.
        """
        self._keys[key_id] = key

    def remove(self, key_id: str) -> None:
        """Stop trusting the key under ``key_id``; nothing happens if there is none.

        Args:
            key_id: The key id to forget.
        """
        self._keys.pop(key_id, None)

    def get(self, key_id: str) -> PublicKey | None:
        """The key under ``key_id``, or None.

        Args:
            key_id: The key id to look up.
        """
        return self._keys.get(key_id)

    def verify(self, key_id: str, data: bytes, signature_b64: str) -> None:
        """Check that the key under ``key_id`` signed ``data``.

        Args:
            key_id: The key id the signature claims.
            data: The signed bytes.
            signature_b64: Base64 of the DER-encoded ECDSA signature.

        Raises:
            UnknownKeyError: No key is registered under ``key_id``.
            BadSignatureError: The signature is malformed or does not verify.
        """
        key = self._keys.get(key_id)
        if key is None:
            raise UnknownKeyError(key_id)
        if not key.verify(data, signature_b64):
            raise BadSignatureError(f"signature does not verify with key {key_id!r}")

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)


def sign_event(
    key: PrivateKey, event_id: str, source: str, event_type: str, time: str, payload: bytes
) -> str:
    """Sign an event's :func:`canonical_bytes`.

    Args:
        key: The signer's private key.
        event_id: The CloudEvents ``id``.
        source: The CloudEvents ``source``.
        event_type: The CloudEvents ``type``.
        time: The CloudEvents ``time``, exactly as it will be carried.
        payload: The payload bytes exactly as they will be carried.

    Returns:
        The value for the ``ce_signature`` header.

    Raises:
        SigningError: An attribute is not valid Unicode text.
    """
    return key.sign(canonical_bytes(event_id, source, event_type, time, payload))


def verify_event(
    ring: KeyRing,
    key_id: str,
    signature_b64: str,
    event_id: str,
    source: str,
    event_type: str,
    time: str,
    payload: bytes,
) -> None:
    """Check an event's signature against the key its ``ce_sigkeyid`` names.

    Args:
        ring: The trusted keys.
        key_id: The ``ce_sigkeyid`` header.
        signature_b64: The ``ce_signature`` header.
        event_id: The CloudEvents ``id``.
        source: The CloudEvents ``source``.
        event_type: The CloudEvents ``type``.
        time: The CloudEvents ``time`` header, as received.
        payload: The payload bytes, as received.

    Raises:
        UnknownKeyError: No key is registered under ``key_id``.
        BadSignatureError: The signature is malformed or does not match the event.
    """
    if key_id not in ring:
        raise UnknownKeyError(key_id)
    try:
        data = canonical_bytes(event_id, source, event_type, time, payload)
    except SigningError as error:
        raise BadSignatureError(str(error)) from None
    ring.verify(key_id, data, signature_b64)
