"""The catalogue and its schemas, and the governance checks that guard them."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import fastavro
import pytest
import yaml

from streams.contract.catalog import Catalog, CatalogError
from streams.contract.jsonavro import from_json, to_json
from streams.registry.governance import (
    check_catalog_consistency,
    check_evolution,
    compatibility_problems,
)
from streams.settings import DEFAULT_CATALOG

SCHEMAS = DEFAULT_CATALOG.parent


@pytest.fixture
def catalog_copy(tmp_path: Path) -> Path:
    """A writable copy of schemas/ to break."""
    shutil.copytree(SCHEMAS, tmp_path / "schemas")
    return tmp_path / "schemas"


def test_the_catalogue_has_at_least_8_types_from_5_institutions_and_no_problems() -> None:
    catalog = Catalog.load()
    assert len(catalog) >= 8
    assert len({t.owner for t in catalog}) >= 5
    assert check_catalog_consistency(catalog) == []


def test_every_sample_payload_round_trips_through_avro() -> None:
    catalog = Catalog.load()
    samples = yaml.safe_load((SCHEMAS / "samples.yaml").read_text())
    services = {
        f"{api_code}.{part}": getattr(service, part)
        for api_code, service in catalog.services.items()
        for part in ("request", "response")
    }
    assert set(samples) == set(catalog.event_types) | set(services)
    for name, event_type in [*catalog.event_types.items(), *services.items()]:
        record = from_json(event_type.schema, samples[name])
        out = io.BytesIO()
        fastavro.schemaless_writer(out, event_type.parsed, record)
        out.seek(0)
        assert to_json(fastavro.schemaless_reader(out, event_type.parsed, None)) == samples[name]


def _edit_schema(root: Path, relative: str, edit) -> None:
    path = root / relative
    schema = json.loads(path.read_text())
    edit(schema)
    path.write_text(json.dumps(schema))


def test_a_field_without_doc_is_reported_with_its_path(catalog_copy: Path) -> None:
    _edit_schema(catalog_copy, "tra/TaxPaymentReceived.avsc", lambda s: s["fields"][1].pop("doc"))
    problems = [
        str(p) for p in check_catalog_consistency(Catalog.load(catalog_copy / "catalog.yaml"))
    ]
    assert problems == [
        "schemas/tra/TaxPaymentReceived.avsc: TaxPaymentReceived.controlNumber has no doc"
    ]


def test_a_record_name_that_does_not_match_its_file_is_refused(catalog_copy: Path) -> None:
    _edit_schema(catalog_copy, "moh/PatientReferred.avsc", lambda s: s.update(name="Referral"))
    with pytest.raises(
        CatalogError,
        match=r"event_types.tz.go.moh.PatientReferred.schema: .* defines tz.go.moh.Referral",
    ):
        Catalog.load(catalog_copy / "catalog.yaml")


def test_catalogue_entries_must_name_real_fields(catalog_copy: Path) -> None:
    catalog_file = catalog_copy / "catalog.yaml"
    document = yaml.safe_load(catalog_file.read_text())
    document["event_types"]["tz.go.tra.TaxpayerRegistered"]["key"] = "taxId"
    document["event_types"]["tz.go.nida.CitizenRegistered"]["pii"].append("shoeSize")
    document["event_types"]["tz.go.brela.CompanyRegistered"]["key"] = "authorisedShareCapital"
    catalog_file.write_text(yaml.safe_dump(document))
    problems = {str(p) for p in check_catalog_consistency(Catalog.load(catalog_file))}
    assert problems == {
        "catalog.yaml: event_types.tz.go.tra.TaxpayerRegistered.key: "
        "no field 'taxId' in the schema",
        "catalog.yaml: event_types.tz.go.nida.CitizenRegistered.pii[5]: no field 'shoeSize'",
        "catalog.yaml: event_types.tz.go.brela.CompanyRegistered.key: field "
        "'authorisedShareCapital' must be a non-null string",
    }


def test_an_undeclared_schema_file_is_reported(catalog_copy: Path) -> None:
    shutil.copy(catalog_copy / "tra/TaxPaymentReceived.avsc", catalog_copy / "tra/Orphan.avsc")
    problems = {
        str(p) for p in check_catalog_consistency(Catalog.load(catalog_copy / "catalog.yaml"))
    }
    assert "schemas/tra/Orphan.avsc: not declared in catalog.yaml" in problems
    assert "schemas/tra/Orphan.avsc: record name 'TaxPaymentReceived' != file name" in problems


V1 = {
    "type": "record",
    "name": "PermitIssued",
    "namespace": "tz.go.test",
    "fields": [
        {"name": "permitNumber", "type": "string"},
        {"name": "fee", "type": "long"},
    ],
}


def _v(*fields: dict) -> dict:
    return {**V1, "fields": list(fields)}


def test_adding_an_optional_field_is_compatible_both_ways() -> None:
    v2 = _v(*V1["fields"], {"name": "zone", "type": ["null", "string"], "default": None})
    assert compatibility_problems(v2, V1) == []
    assert compatibility_problems(V1, v2) == []


def test_a_new_field_without_default_names_the_field() -> None:
    v2 = _v(*V1["fields"], {"name": "zone", "type": "string"})
    assert compatibility_problems(v2, V1, "the new schema", "version 1") == [
        "field 'zone' has no default in the new schema and is absent from version 1"
    ]


def test_a_type_change_names_the_field_and_the_types() -> None:
    v2 = _v(V1["fields"][0], {"name": "fee", "type": "string"})
    [problem] = compatibility_problems(v2, V1)
    assert problem.startswith("field 'fee' changed incompatibly:")
    assert "string" in problem
    assert "long" in problem


def test_widening_long_to_double_is_backward_but_not_forward() -> None:
    v2 = _v(V1["fields"][0], {"name": "fee", "type": "double"})
    assert compatibility_problems(v2, V1) == []
    assert compatibility_problems(V1, v2) != []


def _event_type(schema: dict, level: str):
    from streams.contract.catalog import EventType

    return EventType(
        name="tz.go.test.PermitIssued",
        owner="test",
        schema_path=Path("schemas/test/PermitIssued.avsc"),
        schema=schema,
        key="permitNumber",
        compatibility=level,
    )


def test_evolution_is_checked_at_the_declared_level_and_names_the_rule() -> None:
    removed_fee = _v(V1["fields"][0])
    # Dropping a field: BACKWARD accepts it (new readers ignore it) ...
    assert check_evolution(_event_type(removed_fee, "BACKWARD"), [(1, V1)]) == []
    # ... FORWARD does not: old readers need 'fee' and it has no default.
    [problem] = check_evolution(_event_type(removed_fee, "FORWARD"), [(1, V1)])
    assert str(problem) == (
        "test/PermitIssued.avsc: field 'fee' has no default in registered version 1 and is "
        "absent from the new schema — breaks FORWARD (readers on registered version 1 must "
        "read events written with the new schema)"
    )


def test_transitive_levels_check_every_registered_version() -> None:
    v2 = _v(V1["fields"][0], {"name": "fee", "type": "double"})
    v3 = _v(
        V1["fields"][0],
        {"name": "fee", "type": "double"},
        {"name": "x", "type": "int", "default": 0},
    )
    # v3 reads v2 data; and v1 data (long -> double promotion): fine for BACKWARD_TRANSITIVE.
    assert check_evolution(_event_type(v3, "BACKWARD_TRANSITIVE"), [(1, V1), (2, v2)]) == []
    # FORWARD_TRANSITIVE: v1 readers cannot read v3's double fee.
    problems = check_evolution(_event_type(v3, "FORWARD_TRANSITIVE"), [(1, V1), (2, v2)])
    assert len(problems) == 1
    assert "readers on registered version 1 must read" in problems[0].message
    assert "field 'fee' changed incompatibly" in problems[0].message
    # Non-transitive FORWARD only looks at the latest (v2), which reads v3 fine.
    assert check_evolution(_event_type(v3, "FORWARD"), [(1, V1), (2, v2)]) == []


def test_superseded_versions_are_kept_in_order_and_evolved_by_the_rule(
    catalog_copy: Path,
) -> None:
    payment = Catalog.load().get("tz.go.tra.TaxPaymentReceived")
    assert payment is not None
    assert len(payment.versions) == 2
    assert "billReference" not in {f["name"] for f in payment.versions[0]["fields"]}
    assert payment.versions[-1] == payment.schema

    # A history whose step breaks the declared rule (FULL_TRANSITIVE) is reported.
    _edit_schema(
        catalog_copy,
        "tra/history/TaxPaymentReceived.v1.avsc",
        lambda s: s["fields"].append({"name": "legacyCode", "type": "string", "doc": "Old."}),
    )
    problems = [
        str(p) for p in check_catalog_consistency(Catalog.load(catalog_copy / "catalog.yaml"))
    ]
    assert problems == [
        "tra/TaxPaymentReceived.avsc: field 'legacyCode' has no default in version 1 and is "
        "absent from the new schema — breaks FULL_TRANSITIVE (readers on version 1 must read "
        "events written with the new schema)"
    ]
