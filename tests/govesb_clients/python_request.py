"""Drives GovESB's Python client (``govesb`` 2.1.0 from PyPI), unmodified, for a request.

Reads its configuration as JSON on stdin; prints JSON with the raw reply of
``ESBHelper2.esb_request_with_token`` (token, then ``{"apiCode","authorization","esbBody"}``
signed over ``json.dumps`` with its default separators, ``Authorization: Bearer``) and the
package's own ``ECC.verify_payload`` verdict over the reply's data in the Python style
(``json.dumps(data, separators=(",", ":"))``).
"""

from __future__ import annotations

import json
import sys

from govesb import ECC
from govesb.v1.models.enums import DataFormatEnum
from govesb.v1.services.esb_helper2 import ESBHelper2


def main() -> None:
    config = json.load(sys.stdin)
    reply = ESBHelper2.esb_request_with_token(
        config["clientId"], config["clientSecret"], config["apiCode"], config["esbBody"],
        DataFormatEnum.JSON, config["privateKey"], config["tokenUrl"], config["requestUrl"],
    )  # fmt: skip
    document = json.loads(reply)
    compact = json.dumps(document["data"], separators=(",", ":"))
    verified = ECC.verify_payload(compact, document["signature"], config["esbPublicKey"])
    json.dump({"reply": reply, "verified": verified}, sys.stdout)


if __name__ == "__main__":
    main()
