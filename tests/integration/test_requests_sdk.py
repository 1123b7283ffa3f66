"""Requests across the whole bus with real processes: the SDK's Requester and Provider, the
``govesb request`` command, a real worker, the provider connector and a legacy HTTP provider.

moh asks NIDA (HTTP, through ``govesb connect provider``) with the SDK; tra asks it with the
CLI; brela asks TRA, which answers Kafka-natively with the SDK's Provider.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from typer.testing import CliRunner

from connectors.cli import app
from streams.client.answering import Provider, ProviderFailure
from streams.client.requesting import Requester
from streams.contract import requests
from streams.contract.signing import load_private_key
from streams.settings import REPO_ROOT, KafkaSettings, SchemaRegistrySettings
from tests.groups import start_group_at_ends
from tests.integration.test_provider_connector import (  # noqa: F401 - fixtures
    KNOWN_NIN,
    LegacyNida,
    nida,
    provider_registry,
    start_connector,
)
from tests.unit.pipeline_fixtures import KEY_IDS

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.http, pytest.mark.slow]
MOH_KEY_ID = "moh-563d2616bddc"


def _key(institution: str) -> Any:
    return load_private_key((REPO_ROOT / f"deploy/demo-keys/{institution}.key.pem").read_text())


def _requester(kafka: str, registry: str, institution: str, key_id: str) -> Requester:
    return Requester.connect(
        institution=institution, system=_system(institution), key_id=key_id,
        key=_key(institution), kafka=KafkaSettings(bootstrap_servers=kafka),
        schema_registry=SchemaRegistrySettings(url=registry),
    )  # fmt: skip


def _system(institution: str) -> str:
    return {"moh": "gothomis", "brela": "ors", "rita": "crvs", "tra": "itax"}[institution]


async def start_worker_at_the_end(kafka: str, start_worker: Any) -> None:
    """A worker whose group starts at the end of every ingress topic (on a broker shared with
    other tests and their benchmarks, a fresh group reading the ingress topics from the
    beginning would reach this test's requests minutes later)."""
    app_id = f"test-pipeline-{uuid.uuid4().hex[:8]}"
    await start_group_at_ends(kafka, app_id, "esb.ingress.")
    await asyncio.to_thread(start_worker, app_id)


@pytest.fixture
async def bus(kafka: str, start_worker, start_connector) -> None:  # noqa: F811
    """A worker and nida's provider connector (the registry points VERIFY_NIN at the test's
    legacy API)."""
    await start_worker_at_the_end(kafka, start_worker)
    await start_connector()


async def test_a_kafka_native_requester_gets_the_fields_of_its_grant_or_a_refusal(
    kafka: str,
    registry: str,
    nida: LegacyNida,  # noqa: F811 - the fixture imported above
    bus: None,
) -> None:
    async with _requester(kafka, registry, "moh", MOH_KEY_ID) as moh:
        answer = await moh.request("VERIFY_NIN", {"nin": KNOWN_NIN}, timeout=30)
        unknown = await moh.request("VERIFY_NIN", {"nin": "19000000000000000000"}, timeout=30)
    assert answer.success, answer
    assert answer.status == "answered"
    # moh's grant: nin, valid, firstName, middleName, lastName, dateOfBirth, alive.
    assert answer.body == {
        "nin": KNOWN_NIN, "valid": True, "firstName": "Neema", "middleName": "Joseph",
        "lastName": "Mwakyusa", "dateOfBirth": "1990-01-14", "alive": True,
    }  # fmt: skip
    # The connector called NIDA's legacy API for it (another test's Kafka-native provider on
    # a shared broker may answer first with the same sample citizen).
    assert nida.calls[requests.govesb_request_id(answer.request_id)] >= 1
    assert (unknown.success, unknown.body["valid"]) == (True, False)  # type: ignore[index]

    # brela has no grant for VERIFY_NIN (only for TIN_STATUS): refused by the bus, with why.
    async with _requester(kafka, registry, "brela", KEY_IDS["brela"]) as brela:
        refused = await brela.request("VERIFY_NIN", {"nin": KNOWN_NIN}, timeout=30)
    assert (refused.success, refused.status, refused.reason) == (False, "refused", "no-grant")
    assert refused.body is None


async def test_the_cli_prints_the_answer_minimised_and_masked_and_fails_on_refusal(
    kafka: str,
    registry: str,
    cli_options: list[str],
    nida: LegacyNida,  # noqa: F811 - the fixture imported above
    bus: None,
) -> None:
    runner = CliRunner()
    data = json.dumps({"nin": KNOWN_NIN})
    asked = await asyncio.to_thread(
        runner.invoke, app,
        [*cli_options, "request", "--as", "tra", "--api", "VERIFY_NIN", "--data", data,
         "--timeout", "30"],
    )  # fmt: skip
    assert asked.exit_code == 0, asked.output
    answer = json.loads(asked.stdout)
    # tra's grant: nin, valid, firstName, lastName, phoneNumber (masked), alive.
    assert set(answer) == {"nin", "valid", "firstName", "lastName", "phoneNumber", "alive"}
    assert answer["firstName"] == "Neema"
    assert answer["phoneNumber"] != "+255754123456"
    assert answer["phoneNumber"].endswith("56")

    refused = await asyncio.to_thread(
        runner.invoke, app,
        [*cli_options, "request", "--as", "brela", "--api", "VERIFY_NIN", "--data", data,
         "--timeout", "30"],
    )  # fmt: skip
    assert refused.exit_code == 1
    assert "refused" in refused.output
    assert "no-grant" in refused.output

    nida.behaviour = {"20000000000000000030": "hold"}
    held = json.dumps({"nin": "20000000000000000030"})
    waited = await asyncio.to_thread(
        runner.invoke, app,
        [*cli_options, "request", "--as", "tra", "--api", "VERIFY_NIN", "--data", held,
         "--timeout", "3"],
    )  # fmt: skip
    nida.released.set()
    assert waited.exit_code == 1
    assert "timed-out" in waited.output

    bad = await asyncio.to_thread(
        runner.invoke, app,
        [*cli_options, "request", "--as", "tra", "--api", "VERIFY_NIN", "--data", '{"nim":1}'],
    )  # fmt: skip
    assert bad.exit_code == 2
    assert "VerifyNinRequest" in bad.output


async def test_a_kafka_native_provider_answers_with_its_handler_and_its_failures(
    kafka: str, registry: str, start_worker
) -> None:
    await start_worker_at_the_end(kafka, start_worker)
    tin = f"9{uuid.uuid4().int % 10**8:08d}"

    async def tin_status(body: Mapping[str, Any]) -> dict[str, Any]:
        if body["tin"] == "000000000":
            raise ProviderFailure("iTax is in maintenance")
        name = "Kilimanjaro Agro Processors Limited"
        return {"tin": body["tin"], "registered": True, "taxpayerName": name, "compliant": True}

    stopping = asyncio.Event()
    provider = Provider.connect(
        institution="tra", system="itax", key_id=KEY_IDS["tra"], key=_key("tra"),
        handlers={"TIN_STATUS": tin_status}, kafka=KafkaSettings(bootstrap_servers=kafka),
        schema_registry=SchemaRegistrySettings(url=registry),
    )  # fmt: skip
    async with provider:
        serving = asyncio.create_task(provider.run(stopping))
        try:
            async with _requester(kafka, registry, "brela", KEY_IDS["brela"]) as brela:
                answer = await brela.request("TIN_STATUS", {"tin": tin}, timeout=30)
                failed = await brela.request("TIN_STATUS", {"tin": "000000000"}, timeout=30)
        finally:
            stopping.set()
            await serving
    assert answer.success, answer
    # brela's grant: tin, registered, compliant (not the taxpayer's name).
    assert answer.body == {"tin": tin, "registered": True, "compliant": True}
    assert (failed.success, failed.status, failed.reason, failed.message) == (
        False, "provider-error", "provider-error", "iTax is in maintenance"
    )  # fmt: skip
    assert provider.answered >= 2
