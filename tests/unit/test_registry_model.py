"""``govesb registry lint``: the example is clean; each mistake is named with its YAML path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from connectors.cli import app
from streams.registry.model import load_registry
from streams.registry.sync import RegistryView, plan_changes, registry_records
from streams.settings import REPO_ROOT, KafkaSettings

EXAMPLE = REPO_ROOT / "deploy" / "registry.example.yaml"


def _write(tmp_path: Path, document: dict) -> Path:
    document["catalog"] = str(REPO_ROOT / "schemas" / "catalog.yaml")
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture
def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_the_example_covers_every_institution_and_type_of_the_catalogue() -> None:
    registry, problems = load_registry(EXAMPLE)
    assert problems == []
    assert registry is not None
    owners = {t.owner for t in registry.catalog}
    assert owners <= set(registry.institutions)
    subscribed = {t for s in registry.subscriptions.values() for t in s.event_types}
    assert subscribed == set(registry.catalog.event_types) - {"tz.go.tra.TaxpayerRegistered"}


def _problems(tmp_path: Path, document: dict) -> list[str]:
    registry, problems = load_registry(_write(tmp_path, document))
    assert registry is None
    return [str(p) for p in problems]


def test_unknown_subscriber_type_and_field_are_named_with_their_paths(
    tmp_path: Path, example: dict
) -> None:
    subscription = example["subscriptions"][0]
    subscription["subscriber"] = "nhif"
    subscription["fields"].append("bloodGroup")
    example["subscriptions"][1]["event_types"] = ["tz.go.rita.MarriageRegistered"]
    assert _problems(tmp_path, example) == [
        "subscriptions[0].subscriber: unknown institution 'nhif'",
        "subscriptions[0].fields[8]: tz.go.nida.CitizenRegistered has no field 'bloodGroup'",
        "subscriptions[1].event_types[0]: unknown event type 'tz.go.rita.MarriageRegistered'",
    ]


def test_duplicate_ids_are_refused(tmp_path: Path, example: dict) -> None:
    example["institutions"].append(dict(example["institutions"][1]))
    example["subscriptions"].append(dict(example["subscriptions"][0]))
    problems = _problems(tmp_path, example)
    assert "institutions: duplicate institution id 'nida'" in problems
    assert "institutions[*].keys: duplicate key id 'nida-2e3f1f063154'" in problems
    assert "subscriptions: duplicate subscription id 'tra-citizen-identity'" in problems


def test_masks_filters_keys_and_http_delivery_are_checked(tmp_path: Path, example: dict) -> None:
    example["subscriptions"][0]["mask"] = ["ward"]
    example["subscriptions"][2]["filter"] = [{"field": "age", "op": "exists"}]
    example["subscriptions"][6]["filter"][0]["value"] = "STAMP_DUTY"
    example["subscriptions"][4]["delivery"] = "http"
    example["institutions"][1]["keys"][0]["public_key"] = "bm90IGEga2V5"
    problems = _problems(tmp_path, example)
    assert "subscriptions[0].mask[0]: 'ward' is masked but not among the delivered fields" in (
        problems
    )
    assert "subscriptions[2].filter[0].field: tz.go.rita.DeathRegistered has no field 'age'" in (
        problems
    )
    assert "subscriptions[6].filter[0].value: 'in' needs a list" in problems
    assert "subscriptions[4].delivery: http delivery but tra has no endpoint" in problems
    assert any(p.startswith("institutions[1].keys[0].public_key: ") for p in problems)


def test_schema_errors_carry_the_yaml_path(tmp_path: Path, example: dict) -> None:
    example["institutions"][2]["id"] = "BRELA!"
    example["subscriptions"][3]["delivery"] = "fax"
    del example["subscriptions"][5]["fields"]
    problems = _problems(tmp_path, example)
    assert problems[0].startswith("institutions[2].id: String should match pattern")
    assert "subscriptions[3].delivery: Input should be 'kafka' or 'http'" in problems
    assert "subscriptions[5].fields: Field required" in problems


def test_lint_command_exits_1_and_prints_each_problem(tmp_path: Path, example: dict) -> None:
    example["subscriptions"][0]["subscriber"] = "nhif"
    result = CliRunner().invoke(app, ["registry", "lint", str(_write(tmp_path, example))])
    assert result.exit_code == 1
    assert "subscriptions[0].subscriber: unknown institution 'nhif'" in result.output
    ok = CliRunner().invoke(app, ["registry", "lint", str(EXAMPLE)])
    assert ok.exit_code == 0
    assert "8 institutions, 9 event types, 9 subscriptions, 2 services, 3 grants" in ok.output


def test_applying_the_same_registry_twice_changes_nothing() -> None:
    registry, _ = load_registry(EXAMPLE)
    assert registry is not None
    records = registry_records(registry)
    assert len(records) == 8 + 9 + 9 + 2 + 3  # institutions, types, agreements, services, grants
    assert plan_changes(records, {}) == records
    assert plan_changes(records, dict(records)) == {}
    smaller = {k: v for k, v in records.items() if k != "subscription/nida-births"}
    assert plan_changes(smaller, records) == {"subscription/nida-births": None}


def test_the_view_applies_records_tombstones_and_skips_malformed_ones() -> None:
    registry, _ = load_registry(EXAMPLE)
    assert registry is not None
    view = RegistryView(KafkaSettings())
    seen: list[str] = []
    view.on_change(seen.append)
    for key, value in registry_records(registry).items():
        view.apply(key, value)
    assert view.key_owner("tra-3509e6ac2798") == "tra"
    assert "tra-3509e6ac2798" in view.keyring
    assert view.subscriptions["nida-births"].subscriber == "nida"
    assert view.event_types["tz.go.tra.TaxPaymentReceived"].avro_schema["name"] == (
        "TaxPaymentReceived"
    )

    view.apply("subscription/nida-births", None)
    view.apply("subscription/broken", b"{not json")
    view.apply("institution/x", json.dumps({"id": "x"}).encode())
    assert "nida-births" not in view.subscriptions
    assert "broken" not in view.subscriptions
    assert "x" not in view.institutions
    assert seen[-1] == "subscription/nida-births"


def test_an_endpoint_url_with_a_password_is_refused() -> None:
    from pydantic import ValidationError

    from streams.registry.model import Endpoint

    with pytest.raises(ValidationError, match="carries a password"):
        Endpoint(url="https://payroll:s3cret@hr.utumishi.go.tz/events")
    with pytest.raises(ValidationError, match="carries a password"):
        Endpoint(
            url="https://hr.utumishi.go.tz/events",
            auth={"type": "oauth2", "token_url": "https://id:s3cret@idp.utumishi.go.tz/token"},
        )
