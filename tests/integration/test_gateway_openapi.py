"""The gateway's OpenAPI document matches what it does: schemathesis against a real gateway.

Generated requests (valid and invalid) go to a running ``govesb connect gateway`` with a
valid bearer token; every response must be one the document declares, with its declared
media type and body schema, and never a 5xx other than the declared 503.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from connectors.gateway.openapi import OPENAPI
from connectors.http_sink.delivery import basic_auth
from deploy.kafka.launcher import free_port
from deploy.worker import DEMO_GATEWAY_ENV, WorkerProcess, start_govesb

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.http, pytest.mark.slow]
SECRET = "openapi-client-secret"  # noqa: S105 - a test client's secret

schema = schemathesis.openapi.from_dict(OPENAPI).include(path_regex="^/(v1|engine|oauth)")


@pytest.fixture(scope="module")
def gateway_process(kafka: str, registry: str, applied_registry, tmp_path_factory) -> WorkerProcess:
    port = free_port()
    process = start_govesb(
        ["connect", "gateway", "--web-port", str(port)],
        {
            "GOVESB_KAFKA__BOOTSTRAP_SERVERS": kafka,
            "GOVESB_SCHEMA_REGISTRY__URL": registry,
            **DEMO_GATEWAY_ENV,
            "GOVESB_CLIENTS__NIDA": SECRET,
            "GOVESB_RATE_PER_S": "1000",
            "GOVESB_BURST": "1000",
        },
        tmp_path_factory.mktemp("gateway") / "gateway.log",
        port,
        lambda body: body["status"] == "ok",
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def token(gateway_process: WorkerProcess) -> str:
    response = requests.post(
        f"http://127.0.0.1:{gateway_process.web_port}/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_auth("nida", SECRET)},
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_response_is_one_the_document_declares(
    case: schemathesis.Case, gateway_process: WorkerProcess, token: str
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    if case.path == "/oauth/token":
        headers = {"Authorization": basic_auth("nida", SECRET)}
    case.call_and_validate(
        base_url=f"http://127.0.0.1:{gateway_process.web_port}",
        headers=headers,
        # A body can match the document's JSON schema and still be refused for business
        # reasons the document cannot express (an unknown event type, a type another
        # institution owns, data that does not match that type's Avro schema): those get a
        # declared 4xx, which the other checks verify.
        excluded_checks=[positive_data_acceptance],
        timeout=30,
    )
