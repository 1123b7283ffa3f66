"""GovESB's public clients as they really write requests and verify replies.

e-GA's Java connector (``tz.go.govesb:connector:0.1.5-RELEASE``) is not on Maven Central, so
it cannot run here: its bytes are reproduced from what its code does (read from the published
jar): ``ESBHelper.createRequest`` builds an ``ESBRequest`` (``@JsonPropertyOrder`` apiCode,
pushCode, userId, authorization, esbBody, requestId; ``NON_NULL``), puts the token in it for
``esbRequest`` and the NIDA request, and serializes it with Jackson (compact, raw UTF-8);
``esbBody`` goes through ``org.json.JSONObject.toMap()``, a ``HashMap``, so its keys come in
Java hash order and its decimals are re-printed (Jackson's ``Double.toString``, then
``BigDecimal``: ``1e7`` -> ``1.0E+7``). The signature is over the UTF-8 bytes of that text;
the body goes out as ``new StringEntity(text)``, which is ISO-8859-1, under the
``Content-Type: application/json`` header set beside it; ``esbPushRequest`` and the NIDA
request send ``Authorization: <token>`` without ``Bearer ``.

The four ways clients verify the bus's replies are here too, as each does it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

CONNECTOR_ORDER = ("apiCode", "pushCode", "userId", "authorization", "esbBody", "requestId")
"""``@JsonPropertyOrder`` of connector 0.1.5's ``ESBRequest`` (``signature`` is never set)."""
NON_ASCII_NAME = "Zuhura Mwanaisha Kassimu Chéri"


def _java_string_hash(text: str) -> int:
    h = 0
    for unit in text.encode("utf-16-be").hex(" ", 2).split():
        h = (31 * h + int(unit, 16)) & 0xFFFFFFFF
    return h


def java_hash_order(keys: Iterable[str]) -> list[str]:
    """The iteration order of a ``java.util.HashMap`` filled with ``keys`` in this order."""
    keys = list(keys)
    capacity = 16
    while len(keys) > capacity * 0.75:
        capacity *= 2

    def bucket(key: str) -> int:
        h = _java_string_hash(key)
        return (h ^ (h >> 16)) & (capacity - 1)

    return sorted(keys, key=lambda k: (bucket(k), keys.index(k)))  # stable within a bucket


def _jackson(value: Any) -> str:
    """Jackson's compact JSON of a value as org.json's ``toMap`` hands it over."""
    if isinstance(value, Mapping):
        members = [f"{json.dumps(k, ensure_ascii=False)}:{_jackson(value[k])}"
                   for k in java_hash_order(value)]  # fmt: skip
        return "{" + ",".join(members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_jackson(v) for v in value) + "]"
    if isinstance(value, float):
        return java_reprinted(value)
    return json.dumps(value, ensure_ascii=False)


def java_reprinted(number: float) -> str:
    """A decimal as the connector re-prints it: Java's ``Double.toString`` read back as a
    ``BigDecimal`` (``100.0`` stays ``100.0``, ``1e7`` becomes ``1.0E+7``; below 1e-3 not
    reproduced here)."""
    if 1e-3 <= abs(number) < 1e7 or number == 0:
        return repr(number)
    if abs(number) < 1e-3:
        raise NotImplementedError("BigDecimal prints small decimals in plain notation")
    exact = Decimal(repr(number))  # the shortest digits, as Java 19+ prints them
    digits = "".join(map(str, exact.normalize().as_tuple().digits))
    sign = "-" if number < 0 else ""
    return f"{sign}{digits[0]}.{digits[1:] or '0'}E+{exact.adjusted()}"


def connector_data(**members: Any) -> str:
    """The data text connector 0.1.5 signs: members in its fixed order, nulls dropped,
    ``esbBody`` in Java hash order, compact, raw UTF-8."""
    parts = []
    for name in CONNECTOR_ORDER:
        value = members.get(name)
        if value is None:
            continue
        text = _jackson(value) if name == "esbBody" else json.dumps(value, ensure_ascii=False)
        parts.append(f'"{name}":{text}')
    return "{" + ",".join(parts) + "}"


def connector_body(data_text: str, signature: str) -> bytes:
    """The body on the wire: Jackson's ``{"data":...,"signature":"..."}`` through
    ``new StringEntity(String)``, i.e. ISO-8859-1 (what Latin-1 cannot hold becomes ``?``)."""
    return f'{{"data":{data_text},"signature":"{signature}"}}'.encode("latin-1", "replace")


# --------------------------------------------------------------------------- verifying


def java_verified_text(body: str) -> str:
    """connector 0.1.5 ``verifyAndExtractData``: ``readTree(body).get("data").toString()``
    (Jackson: compact, insertion order, raw UTF-8, ``/`` not escaped; numbers re-printed)."""

    def jackson(value: Any) -> str:
        if isinstance(value, dict):
            return "{" + ",".join(f"{jackson(k)}:{jackson(v)}" for k, v in value.items()) + "}"
        if isinstance(value, list):
            return "[" + ",".join(jackson(v) for v in value) + "]"
        if isinstance(value, float):
            return _java_double(value)
        if isinstance(value, str):
            return _jackson_string(value)
        return json.dumps(value)

    return jackson(json.loads(body)["data"])


def _java_double(number: float) -> str:
    if 1e-3 <= abs(number) < 1e7 or number == 0:
        return repr(number)
    return java_reprinted(number).replace("E+", "E")


def _jackson_string(text: str) -> str:
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char in "\b\f\n\r\t":
            out.append(json.dumps(char)[1:-1])
        elif char < " ":
            out.append(f"\\u{ord(char):04X}")  # Jackson's hex digits are upper case
        else:
            out.append(char)
    return "".join([*out, '"'])


def python_verified_text(body: str) -> str:
    """The Python style: ``json.dumps(json.loads(body)["data"], separators=(",", ":"))``
    (ASCII escapes)."""
    return json.dumps(json.loads(body)["data"], separators=(",", ":"))


def php_verified_text(body: str) -> str:
    """PHP ``EsbHelper``: the raw text from the first ``{`` after ``data`` to the last
    ``,"signature"``."""
    start = body.index("{", body.index("data"))
    return body[start : body.rindex(',"signature"')]
