"""Event signatures: keys in every format GovESB uses, interop with plain ECDSA signers."""

from __future__ import annotations

import base64
import hashlib
import traceback
from collections.abc import Callable

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import given
from hypothesis import strategies as st

from streams.contract.signing import (
    BadSignatureError,
    KeyFormatError,
    KeyRing,
    PrivateKey,
    PublicKey,
    SigningError,
    UnknownKeyError,
    canonical_bytes,
    generate_private_key,
    key_id_for,
    load_private_key,
    load_public_key,
    sign_event,
    verify_event,
)

SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
CURVES = ["secp256k1", "P-256"]
CURVE_NAMES = {"secp256k1": "secp256k1", "P-256": "secp256r1"}
# Generated once: hypothesis tests cannot take function-scoped fixtures.
KEYS = {curve: generate_private_key(curve) for curve in CURVES}
MESSAGE = b'{"apiCode":"TRA-PAY","esbBody":{"amount":1200}}'


def ring_with(curve: str) -> tuple[KeyRing, str]:
    ring = KeyRing()
    key_id = key_id_for("tra", KEYS[curve].public_key())
    ring.add(key_id, KEYS[curve].public_key())
    return ring, key_id


def cryptography_key(key: PrivateKey) -> ec.EllipticCurvePrivateKey:
    loaded = serialization.load_pem_private_key(key.to_pem().encode(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    return loaded


def wrapped(text: str, width: int = 64) -> str:
    """Base64 wrapped the way Java's MIME encoder and many config files do it."""
    return "\r\n".join(text[i : i + width] for i in range(0, len(text), width)) + "\n"


# --- canonical bytes ---------------------------------------------------------------------------


def test_canonical_bytes_is_the_documented_json_array() -> None:
    payload = b"\x00\x00\x00\x00\x07abc"
    expected = (
        '["govesb-sig-v1","e-1","/institutions/tra/systems/pay","tz.go.tra.PaymentReceived",'
        f'"2025-06-01T10:00:00Z","{hashlib.sha256(payload).hexdigest()}"]'
    ).encode()
    assert (
        canonical_bytes(
            "e-1",
            "/institutions/tra/systems/pay",
            "tz.go.tra.PaymentReceived",
            "2025-06-01T10:00:00Z",
            payload,
        )
        == expected
    )


def test_canonical_bytes_keeps_unicode_as_utf8_and_separates_attributes() -> None:
    assert canonical_bytes("ü", "", "", "", b"").startswith('["govesb-sig-v1","ü"'.encode())
    assert canonical_bytes("a", "b,c", "", "", b"") != canonical_bytes("a,b", "c", "", "", b"")


# --- round trips and key formats ---------------------------------------------------------------


@pytest.mark.parametrize("curve", CURVES)
def test_sign_verify_round_trip(curve: str) -> None:
    key = generate_private_key(curve)
    signature = key.sign(MESSAGE)
    assert key.curve == CURVE_NAMES[curve]
    assert key.public_key().curve == CURVE_NAMES[curve]
    assert key.public_key().verify(MESSAGE, signature)
    assert not key.public_key().verify(MESSAGE + b" ", signature)
    assert not generate_private_key(curve).public_key().verify(MESSAGE, signature)


@pytest.mark.parametrize("alias", ["secp256r1", "prime256v1", "p-256", "SECP256K1"])
def test_curve_aliases(alias: str) -> None:
    assert generate_private_key(alias).curve in {"secp256r1", "secp256k1"}


def test_unknown_curve_is_refused() -> None:
    with pytest.raises(KeyFormatError, match="unsupported curve"):
        generate_private_key("P-384-ish")


@pytest.mark.parametrize("curve", CURVES)
def test_private_key_loads_from_pem_and_base64_der(curve: str) -> None:
    key = KEYS[curve]
    for text in (
        key.to_pem(),
        key.to_pem().encode(),
        key.to_base64_der(),
        wrapped(key.to_base64_der()),
    ):
        loaded = load_private_key(text)
        assert loaded.curve == key.curve
        assert loaded.public_key() == key.public_key()
        assert key.public_key().verify(MESSAGE, loaded.sign(MESSAGE))
    assert "BEGIN PRIVATE KEY" in key.to_pem()
    assert "-----" not in key.to_base64_der()


@pytest.mark.parametrize("curve", CURVES)
def test_private_key_loads_from_sec1_pem(curve: str) -> None:
    sec1 = (
        cryptography_key(KEYS[curve])
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        .decode()
    )
    assert "BEGIN EC PRIVATE KEY" in sec1
    loaded = load_private_key(sec1)
    assert loaded.public_key() == KEYS[curve].public_key()
    assert KEYS[curve].public_key().verify(MESSAGE, loaded.sign(MESSAGE))


@pytest.mark.parametrize("curve", CURVES)
def test_public_key_loads_from_pem_and_base64_der(curve: str) -> None:
    public = KEYS[curve].public_key()
    signature = KEYS[curve].sign(MESSAGE)
    for text in (public.to_pem(), public.to_base64_der(), wrapped(public.to_base64_der(), 76)):
        loaded = load_public_key(text)
        assert loaded == public
        assert loaded.fingerprint() == public.fingerprint()
        assert loaded.verify(MESSAGE, signature)
    assert "BEGIN PUBLIC KEY" in public.to_pem()
    spki = base64.b64decode(public.to_base64_der())
    assert public.fingerprint() == hashlib.sha256(spki).hexdigest()


def test_key_id_is_institution_and_fingerprint_prefix() -> None:
    public = KEYS["secp256k1"].public_key()
    assert key_id_for("tra", public) == f"tra-{public.fingerprint()[:12]}"


# --- interop with plain ECDSA (what Java's SHA256withECDSA and OpenSSL produce) ---------------


def test_high_s_signature_from_cryptography_verifies_on_secp256k1() -> None:
    """libsecp256k1 refuses high-S; Java and OpenSSL emit it half the time. We must accept it."""
    key = KEYS["secp256k1"]
    plain = cryptography_key(key)
    seen_high = seen_low = False
    for attempt in range(200):
        data = MESSAGE + str(attempt).encode()
        der = plain.sign(data, ECDSA_SHA256)
        _, s = decode_dss_signature(der)
        high = s > SECP256K1_ORDER // 2
        seen_high |= high
        seen_low |= not high
        assert key.public_key().verify(data, base64.b64encode(der).decode())
        if seen_high and seen_low:
            break
    assert seen_high
    assert seen_low


@pytest.mark.parametrize("curve", CURVES)
def test_high_s_form_of_our_own_signature_verifies(curve: str) -> None:
    key = KEYS[curve]
    order = SECP256K1_ORDER if curve == "secp256k1" else ec.SECP256R1().group_order
    r, s = decode_dss_signature(base64.b64decode(key.sign(MESSAGE)))
    flipped = base64.b64encode(encode_dss_signature(r, order - s)).decode()
    assert key.public_key().verify(MESSAGE, flipped)


@pytest.mark.parametrize("curve", CURVES)
def test_cryptography_verifies_our_signatures(curve: str) -> None:
    key = KEYS[curve]
    plain_public = cryptography_key(key).public_key()
    for attempt in range(20):
        data = MESSAGE + str(attempt).encode()
        plain_public.verify(base64.b64decode(key.sign(data)), data, ECDSA_SHA256)
    with pytest.raises(InvalidSignature):
        plain_public.verify(base64.b64decode(key.sign(MESSAGE)), MESSAGE + b"x", ECDSA_SHA256)


@pytest.mark.parametrize("curve", CURVES)
def test_cryptography_signature_verifies_with_loaded_public_key(curve: str) -> None:
    plain = ec.generate_private_key(ec.SECP256K1() if curve == "secp256k1" else ec.SECP256R1())
    spki = plain.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public = load_public_key(base64.b64encode(spki).decode())
    signature = base64.b64encode(plain.sign(MESSAGE, ECDSA_SHA256)).decode()
    assert public.verify(MESSAGE, signature)
    assert not public.verify(MESSAGE[:-1], signature)


# --- bad keys ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n",
        "garbage!",
        "bm90IGEga2V5",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        "kéy",
    ],
)
def test_garbage_is_not_a_key(text: str) -> None:
    with pytest.raises(KeyFormatError):
        load_private_key(text)
    with pytest.raises(KeyFormatError):
        load_public_key(text)


def test_rsa_keys_are_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_der = rsa_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(KeyFormatError, match="expected an EC private key, got a key of type RSA"):
        load_private_key(private_pem)
    with pytest.raises(KeyFormatError, match="expected an EC private key"):
        load_private_key(base64.b64encode(private_der))
    with pytest.raises(KeyFormatError, match="expected an EC public key, got a key of type RSA"):
        load_public_key(public_pem)


def test_ed25519_keys_are_refused() -> None:
    public_der = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFormatError, match="expected an EC public key"):
        load_public_key(base64.b64encode(public_der))


def test_private_and_public_keys_are_not_confused() -> None:
    key = KEYS["secp256k1"]
    with pytest.raises(KeyFormatError, match="expected a PEM PUBLIC KEY, got PRIVATE KEY"):
        load_public_key(key.to_pem())
    with pytest.raises(KeyFormatError, match="expected a PEM PRIVATE KEY"):
        load_private_key(key.public_key().to_pem())
    with pytest.raises(KeyFormatError):
        load_public_key(key.to_base64_der())
    with pytest.raises(KeyFormatError):
        load_private_key(key.public_key().to_base64_der())


def test_encrypted_private_key_is_refused() -> None:
    encrypted = cryptography_key(KEYS["P-256"]).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(KeyFormatError, match="encrypted"):
        load_private_key(encrypted)


@pytest.mark.parametrize("curve", CURVES)
def test_no_error_or_repr_shows_the_private_key(curve: str) -> None:
    key = KEYS[curve]
    secret_b64 = key.to_base64_der()
    secret_value = cryptography_key(key).private_numbers().private_value
    secret_forms = [secret_b64, f"{secret_value:x}", str(secret_value)]
    pem_body = "".join(key.to_pem().splitlines()[1:-1])
    corrupted = secret_b64[:40] + "!" + secret_b64[41:]
    attempts: list[Callable[[], object]] = [
        lambda: load_public_key(key.to_pem()),
        lambda: load_public_key(secret_b64),
        lambda: load_private_key(secret_b64[:-8]),
        lambda: load_private_key(corrupted),
        lambda: load_private_key(key.to_pem().replace("PRIVATE KEY", "CERTIFICATE")),
        lambda: load_private_key(secret_b64 + "é"),
        lambda: load_private_key(key.to_pem()[:-40]),
    ]
    for attempt in attempts:
        with pytest.raises(KeyFormatError) as caught:
            attempt()
        shown = "".join(traceback.format_exception(caught.value))
        for form in [*secret_forms, pem_body[:32], secret_b64[-32:]]:
            assert form not in shown
    assert secret_b64 not in repr(key)
    assert f"{secret_value:x}" not in repr(key)
    assert repr(key).startswith("PrivateKey(curve=")


# --- malformed signatures and the key ring -----------------------------------------------------


@pytest.mark.parametrize("curve", CURVES)
@pytest.mark.parametrize(
    "signature",
    [
        "",
        "not base64!",
        "AAAA",
        base64.b64encode(b"\x30\x06\x02\x01\x00\x02\x01\x00").decode(),  # r = s = 0
        base64.b64encode(b"\x30\x02\x02\x00").decode(),
        "é",
    ],
)
def test_malformed_signature_is_false_not_an_exception(curve: str, signature: str) -> None:
    assert KEYS[curve].public_key().verify(MESSAGE, signature) is False
    ring, key_id = ring_with(curve)
    with pytest.raises(BadSignatureError):
        ring.verify(key_id, MESSAGE, signature)


@pytest.mark.parametrize("curve", CURVES)
def test_signature_with_trailing_bytes_is_refused(curve: str) -> None:
    der = base64.b64decode(KEYS[curve].sign(MESSAGE))
    assert not KEYS[curve].public_key().verify(MESSAGE, base64.b64encode(der + b"\x00").decode())


@pytest.mark.parametrize("curve", CURVES)
@given(signature=st.text() | st.binary().map(lambda raw: base64.b64encode(raw).decode()))
def test_verify_never_raises(curve: str, signature: str) -> None:
    assert KEYS[curve].public_key().verify(MESSAGE, signature) is False


def test_key_ring_add_get_remove() -> None:
    ring = KeyRing()
    public = KEYS["P-256"].public_key()
    assert "tra-1" not in ring
    assert ring.get("tra-1") is None
    ring.add("tra-1", public)
    assert "tra-1" in ring
    assert ring.get("tra-1") is public
    assert len(ring) == 1
    ring.verify("tra-1", MESSAGE, KEYS["P-256"].sign(MESSAGE))
    ring.remove("tra-1")
    ring.remove("tra-1")
    assert "tra-1" not in ring
    with pytest.raises(UnknownKeyError) as caught:
        ring.verify("tra-1", MESSAGE, KEYS["P-256"].sign(MESSAGE))
    assert caught.value.key_id == "tra-1"


def test_unknown_key_id_is_reported_as_such() -> None:
    ring, _ = ring_with("secp256k1")
    signature = sign_event(KEYS["secp256k1"], "e-1", "/s", "t", "now", b"x")
    with pytest.raises(UnknownKeyError, match="nra-000000000000"):
        verify_event(ring, "nra-000000000000", signature, "e-1", "/s", "t", "now", b"x")


def test_wrong_key_is_a_bad_signature() -> None:
    ring, key_id = ring_with("secp256k1")
    signature = sign_event(KEYS["P-256"], "e-1", "/s", "t", "now", b"x")
    with pytest.raises(BadSignatureError, match=key_id):
        verify_event(ring, key_id, signature, "e-1", "/s", "t", "now", b"x")


def test_lone_surrogate_cannot_be_signed_and_does_not_verify() -> None:
    ring, key_id = ring_with("P-256")
    with pytest.raises(SigningError):
        sign_event(KEYS["P-256"], "\ud800", "/s", "t", "now", b"x")
    with pytest.raises(BadSignatureError):
        verify_event(ring, key_id, "AAAA", "\ud800", "/s", "t", "now", b"x")


def test_public_key_equality_and_repr() -> None:
    public = KEYS["secp256k1"].public_key()
    assert public == load_public_key(public.to_pem())
    assert public != KEYS["P-256"].public_key()
    assert len({public, load_public_key(public.to_base64_der())}) == 1
    assert isinstance(public, PublicKey)
    assert public.fingerprint()[:12] in repr(public)


# --- properties --------------------------------------------------------------------------------

# Plenty of the characters that break naive concatenation, and any other Unicode.
attribute = st.text(
    alphabet=st.sampled_from('",\n\\[]{} :') | st.characters(codec="utf-8"), max_size=40
)


@pytest.mark.parametrize("curve", CURVES)
@given(
    attributes=st.tuples(attribute, attribute, attribute, attribute),
    payload=st.binary(min_size=1, max_size=300),
    data=st.data(),
)
def test_signed_event_verifies_and_any_change_breaks_it(
    curve: str,
    attributes: tuple[str, str, str, str],
    payload: bytes,
    data: st.DataObject,
) -> None:
    ring, key_id = ring_with(curve)
    signature = sign_event(KEYS[curve], *attributes, payload)
    verify_event(ring, key_id, signature, *attributes, payload)

    which = data.draw(st.integers(0, 3), label="attribute changed")
    replacement = data.draw(attribute.filter(lambda new: new != attributes[which]))
    event_id, source, event_type, time = (
        replacement if position == which else value for position, value in enumerate(attributes)
    )
    with pytest.raises(BadSignatureError):
        verify_event(ring, key_id, signature, event_id, source, event_type, time, payload)

    index = data.draw(st.integers(0, len(payload) - 1), label="payload byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    flipped = bytearray(payload)
    flipped[index] ^= 1 << bit
    with pytest.raises(BadSignatureError):
        verify_event(ring, key_id, signature, *attributes, bytes(flipped))
