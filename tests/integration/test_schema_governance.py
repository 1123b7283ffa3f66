"""``govesb schemas check|register`` against the real registry."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml
from confluent_kafka.schema_registry import SchemaRegistryClient
from typer.testing import CliRunner

from connectors.cli import app
from streams.contract.catalog import Catalog

pytestmark = pytest.mark.registry


def test_the_catalogue_registers_once_and_then_is_unchanged(
    cli_options: list[str], registry: str
) -> None:
    runner = CliRunner()
    first = runner.invoke(app, [*cli_options, "schemas", "register"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, [*cli_options, "schemas", "register"])
    assert again.exit_code == 0, again.output
    # every event type, and each service's request and response record
    assert again.output.count("unchanged") == len(Catalog.load().schema_types())

    client = SchemaRegistryClient({"url": registry})
    for event_type in Catalog.load().schema_types():
        versions = client.get_versions(event_type.subject)
        assert versions == list(range(1, len(event_type.versions) + 1))
        for number, schema in zip(versions, event_type.versions, strict=True):
            registered = client.get_version(event_type.subject, number).schema.schema_str
            assert json.loads(registered) == schema
        assert client.get_compatibility(event_type.subject) == event_type.compatibility
    payment_versions = client.get_versions("tz.go.tra.TaxPaymentReceived")
    assert payment_versions == [1, 2]  # v1 from schemas/tra/history, v2 the current file
    check = runner.invoke(app, [*cli_options, "schemas", "check"])
    assert check.exit_code == 0, check.output
    assert "no problems" in check.output


def _catalogue(root: Path, institution: str, fields: list[dict]) -> Path:
    schema = {
        "type": "record",
        "name": "PermitIssued",
        "namespace": f"tz.go.{institution}",
        "doc": "A permit was issued.",
        "fields": [{"doc": f"The {f['name']}.", **f} for f in fields],
    }
    (root / institution).mkdir(parents=True, exist_ok=True)
    (root / institution / "PermitIssued.avsc").write_text(json.dumps(schema, indent=2))
    catalog = {
        "event_types": {
            f"tz.go.{institution}.PermitIssued": {
                "owner": institution,
                "schema": f"{institution}/PermitIssued.avsc",
                "key": "permitNumber",
                "compatibility": "BACKWARD",
            }
        }
    }
    (root / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    return root / "catalog.yaml"


def test_an_incompatible_change_is_refused_naming_field_and_rule(
    tmp_path: Path, cli_options: list[str], registry: str
) -> None:
    institution = f"t{uuid.uuid4().hex[:10]}"
    v1 = [{"name": "permitNumber", "type": "string"}, {"name": "fee", "type": "long"}]
    catalog = _catalogue(tmp_path, institution, v1)
    options = [*cli_options, "--catalog", str(catalog)]
    runner = CliRunner()
    assert runner.invoke(app, [*options, "schemas", "register"]).exit_code == 0

    # Compatible: a new optional field.
    v2 = [*v1, {"name": "zone", "type": ["null", "string"], "default": None}]
    _catalogue(tmp_path, institution, v2)
    assert runner.invoke(app, [*options, "schemas", "check"]).exit_code == 0
    assert runner.invoke(app, [*options, "schemas", "register"]).exit_code == 0

    # Incompatible under BACKWARD: a required field without default, and a type change.
    v3 = [
        {"name": "permitNumber", "type": "string"},
        {"name": "fee", "type": "string"},
        {"name": "zone", "type": ["null", "string"], "default": None},
        {"name": "inspector", "type": "string"},
    ]
    _catalogue(tmp_path, institution, v3)
    check = runner.invoke(app, [*options, "schemas", "check"])
    assert check.exit_code == 1
    assert f"{institution}/PermitIssued.avsc: field 'fee' changed incompatibly:" in check.output
    assert (
        "field 'inspector' has no default in the new schema and is absent from registered "
        "version 2 — breaks BACKWARD (the new schema must read events written with registered "
        "version 2)" in check.output
    )
    refused = runner.invoke(app, [*options, "schemas", "register"])
    assert refused.exit_code == 1
    assert "nothing registered" in refused.output
    subject = f"tz.go.{institution}.PermitIssued"
    assert SchemaRegistryClient({"url": registry}).get_versions(subject) == [1, 2]


def test_an_unreachable_registry_is_a_clear_error(cli_options: list[str]) -> None:
    result = CliRunner().invoke(
        app, ["--schema-registry", "http://127.0.0.1:9/apis/ccompat/v7", "schemas", "check"]
    )
    assert result.exit_code == 2
    assert "schema registry unreachable at http://127.0.0.1:9/apis/ccompat/v7" in result.output
    offline = CliRunner().invoke(app, ["schemas", "check", "--offline"])
    assert offline.exit_code == 0
