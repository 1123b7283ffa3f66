"""Drives GovESB's Python client (``govesb`` 2.1.0 from PyPI), unmodified.

Reads its configuration as JSON on stdin; prints JSON with the token reply's fields, the
push's raw reply and the package's own ``ECC.verify_payload`` verdict over the reply's data
in the Python style (``json.dumps(data, separators=(",", ":"))``).

What of the package works as shipped: ``GovESBTokenService.get_esb_access_token`` and
``govesb.v1.services.esb_helper2.ESBHelper2.esb_push_request`` (the raw token in
``Authorization``, the body ``json.dumps`` with its default separators, the key base64 of a
PEM). Its top-level ``ESBHelper.create_signed_request`` raises ``TypeError`` (it passes
``apiCode=`` to a dataclass whose field is ``api_code``); its ``verify_and_extract_data``
verifies over the whole document, signature included, which no signer can produce; and
``ESBHelper2.verify_signed_payload`` re-serializes with spaces, which no bus that Java and
Node clients verify can sign: those are not driven here.
"""

from __future__ import annotations

import json
import sys

from govesb import ECC, GovESBTokenService
from govesb.v1.models.enums import DataFormatEnum
from govesb.v1.services.esb_helper2 import ESBHelper2


def main() -> None:
    config = json.load(sys.stdin)
    token = GovESBTokenService.get_esb_access_token(
        config["clientId"], config["clientSecret"], config["tokenUrl"]
    )
    if not token.success:
        raise SystemExit("no token")
    reply = ESBHelper2.esb_push_request(
        config["pushCode"], token.access_token, json.dumps(config["esbBody"]),
        DataFormatEnum.JSON, config["privateKey"], config["pushUrl"],
    )  # fmt: skip
    document = json.loads(reply)
    compact = json.dumps(document["data"], separators=(",", ":"))
    verified = ECC.verify_payload(compact, document["signature"], config["esbPublicKey"])
    json.dump({"token": token.access_token, "reply": reply, "verified": verified}, sys.stdout)


if __name__ == "__main__":
    main()
