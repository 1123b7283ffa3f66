"""``govesb registry apply`` asks the real schema registry about pinned versions first."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient
from typer.testing import CliRunner

from connectors.cli import app
from streams.registry.view import RegistryView
from streams.settings import REPO_ROOT, KafkaSettings

pytestmark = [pytest.mark.kafka, pytest.mark.registry]


def test_apply_refuses_an_agreement_pinned_to_a_version_the_registry_lacks(
    kafka: str, cli_options: list[str], applied_registry: Path, tmp_path: Path
) -> None:
    document = yaml.safe_load(applied_registry.read_text())
    document["catalog"] = str(REPO_ROOT / "schemas" / "catalog.yaml")
    newcomer = f"inst-{uuid.uuid4().hex[:8]}"
    agreement = f"pinned-{uuid.uuid4().hex[:8]}"
    document["institutions"].append({"id": newcomer, "name": "Newcomer", "systems": ["x"]})
    document["subscriptions"].append(
        {
            "id": agreement,
            "subscriber": newcomer,
            "event_types": ["tz.go.tra.TaxPaymentReceived"],
            "fields": ["receiptNumber", "amount"],
            "schema_version": 99,
        }
    )
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))

    linted = CliRunner().invoke(app, ["registry", "lint", str(path)])
    assert linted.exit_code == 0, linted.output
    assert "not checked offline" in linted.stdout

    result = CliRunner().invoke(app, [*cli_options, "registry", "apply", str(path)])

    assert result.exit_code == 1, result.output
    index = len(document["subscriptions"]) - 1
    assert (
        f"subscriptions[{index}].schema_version: agreement '{agreement}' pins "
        "tz.go.tra.TaxPaymentReceived (event_types[0]) to version 99, but the schema registry "
        "has version" in " ".join(result.stderr.split())
    ), result.stderr
    assert "nothing applied" in result.stderr
    settings = KafkaSettings(bootstrap_servers=kafka)
    records, existing = asyncio.run(_registry_records_and_topics(settings))
    assert f"subscription/{agreement}" not in records
    assert f"institution/{newcomer}" not in records
    assert f"esb.ingress.{newcomer}" not in existing


async def _registry_records_and_topics(settings: KafkaSettings) -> tuple[set[str], set[str]]:
    view = RegistryView(settings)
    await view.start(follow=False)
    await view.stop()
    admin = AIOKafkaAdminClient(**settings.aiokafka_options())
    await admin.start()
    try:
        return set(view.raw), set(await admin.list_topics())
    finally:
        await admin.close()
