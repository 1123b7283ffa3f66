"""AsyncAPI documents from the catalogue and the registry (``govesb catalog asyncapi``).

The official parser checks the documents in tests/integration/test_asyncapi.py; these tests
check what they say: who may publish what, what each agreement delivers, the schemas as they
are in schemas/, the headers the bus really writes.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import fastavro
import pytest
import yaml
from typer.testing import CliRunner

from streams.audit.chain import AuditChain
from streams.cli.main import build_app
from streams.contract.jsonavro import from_json
from streams.contract.reasons import REASON_DOCS, Reason
from streams.pipeline.routing import delivery_schema
from streams.registry.asyncapi import PLACEHOLDER_HOST, BusServer, asyncapi_document
from streams.registry.asyncapi_messages import AsyncApiError, delivery_message
from streams.registry.asyncapi_parts import AVRO_FORMAT
from streams.registry.model import BusRegistry, Subscription, load_registry
from streams.settings import REPO_ROOT

EXAMPLE = REPO_ROOT / "deploy" / "registry.example.yaml"
SAMPLES = yaml.safe_load((REPO_ROOT / "schemas" / "samples.yaml").read_text(encoding="utf-8"))
runner = CliRunner()


def _load(path: Path) -> BusRegistry:
    registry, problems = load_registry(path)
    assert problems == []
    assert registry is not None
    return registry


@pytest.fixture(scope="module")
def registry() -> BusRegistry:
    return _load(EXAMPLE)


@pytest.fixture(scope="module")
def bus(registry: BusRegistry) -> dict[str, Any]:
    return asyncapi_document(registry, SAMPLES)


@pytest.fixture(scope="module")
def nida(registry: BusRegistry) -> dict[str, Any]:
    return asyncapi_document(registry, SAMPLES, institution="nida")


def resolve(document: dict[str, Any], reference: dict[str, str]) -> Any:
    """Follow a local ``$ref`` (and the references it leads to)."""
    node: Any = document
    for part in reference["$ref"].removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return resolve(document, node) if isinstance(node, dict) and "$ref" in node else node


def operation_messages(document: dict[str, Any], operation: str) -> list[dict[str, Any]]:
    return [resolve(document, m) for m in document["operations"][operation]["messages"]]


def test_whole_bus_has_one_parametrised_channel_per_topic_family(
    bus: dict[str, Any], registry: BusRegistry
) -> None:
    addresses = {name: channel["address"] for name, channel in bus["channels"].items()}
    assert addresses == {
        "ingress": "esb.ingress.{institution}",
        "deliver": "esb.deliver.{institution}",
        "rejected": "esb.rejected.{institution}",
        "dlq": "esb.dlq.{institution}",
        "audit": "esb.audit",
        "request": "esb.request.{institution}",  # requests routed to a provider
        "reply": "esb.reply.{institution}",  # the answers to a requester
    }
    ids = [i.id for i in registry.document.institutions]
    for name in ("ingress", "deliver", "rejected", "dlq", "request", "reply"):
        assert bus["channels"][name]["parameters"]["institution"]["enum"] == ids
    assert "parameters" not in bus["channels"]["audit"]
    assert bus["channels"]["audit"]["bindings"]["kafka"]["topicConfiguration"] == {
        "retention.ms": -1
    }


def test_server_is_kafka_with_the_schema_registry_binding() -> None:
    document = asyncapi_document(
        _load(EXAMPLE),
        SAMPLES,
        server=BusServer("kafka-1.bus.go.tz:9093", "https://registry.bus.go.tz/apis/ccompat/v7"),
    )
    assert document["asyncapi"] == "3.0.0"
    assert document["servers"]["govesb"]["host"] == "kafka-1.bus.go.tz:9093"
    assert document["servers"]["govesb"]["protocol"] == "kafka"
    assert document["servers"]["govesb"]["bindings"]["kafka"] == {
        "schemaRegistryUrl": "https://registry.bus.go.tz/apis/ccompat/v7",
        "schemaRegistryVendor": "confluent",
        "bindingVersion": "0.5.0",
    }


def test_every_event_type_is_published_by_its_owner_with_its_schema_file_as_is(
    bus: dict[str, Any], registry: BusRegistry
) -> None:
    published = {
        message["name"]: (operation.split(".")[0], message)
        for operation in bus["operations"]
        if operation.endswith(".publish")
        for message in operation_messages(bus, operation)
    }
    assert set(published) == set(registry.catalog.event_types)
    for event_type in registry.catalog:
        owner, message = published[event_type.name]
        assert owner == event_type.owner
        on_disk = json.loads(event_type.schema_path.read_text(encoding="utf-8"))
        assert message["payload"] == {
            "schemaFormat": "application/vnd.apache.avro+json;version=1.9.0",
            "schema": on_disk,
        }
        assert message["x-govesb-pii"] == list(event_type.pii)
        assert message["bindings"]["kafka"]["key"]["type"] == "string"
        assert f"`{event_type.key}`" in message["bindings"]["kafka"]["key"]["description"]
        example = message["examples"][0]
        assert example["payload"] == SAMPLES[event_type.name]
        assert example["headers"]["ce_type"] == event_type.name
        assert example["headers"]["ce_subject"] == str(SAMPLES[event_type.name][event_type.key])


def test_nida_view_has_what_nida_may_publish_and_nothing_it_may_not(
    nida: dict[str, Any],
) -> None:
    sends = [name for name, op in nida["operations"].items() if op["action"] == "send"]
    assert sends == ["nida.publish"]
    assert [m["name"] for m in operation_messages(nida, "nida.publish")] == [
        "tz.go.nida.CitizenRegistered"
    ]
    assert nida["channels"]["ingress"]["address"] == "esb.ingress.nida"
    # its events, and (it serves VERIFY_NIN) its answers
    assert list(nida["channels"]["ingress"]["messages"]) == [
        "tz.go.nida.CitizenRegistered",
        "VERIFY_NIN.answer",
    ]
    # nida receives births and deaths under its agreements, but never as their publisher
    assert "tz.go.rita.BirthRegistered" not in nida["components"]["messages"]
    assert "tz.go.rita.DeathRegistered" not in nida["components"]["messages"]
    receives = {name for name, op in nida["operations"].items() if op["action"] == "receive"}
    assert receives == {
        "nida.receive.nida-births", "nida.receive.nida-deaths", "nida.rejections",
        "nida.serve.VERIFY_NIN",
    }  # fmt: skip
    serve = nida["operations"]["nida.serve.VERIFY_NIN"]
    assert serve["channel"] == {"$ref": "#/channels/request"}
    assert serve["reply"]["channel"] == {"$ref": "#/channels/ingress"}
    assert nida["channels"]["request"]["address"] == "esb.request.nida"
    assert not any(name.startswith("tra.") for name in nida["operations"])
    # operators' topics are not nida's (ACLs); nida calls no API: no reply topic
    assert set(nida["channels"]) == {"ingress", "deliver", "rejected", "request"}
    assert nida["channels"]["deliver"]["address"] == "esb.deliver.nida"
    assert nida["channels"]["rejected"]["address"] == "esb.rejected.nida"


def test_an_agreement_delivers_only_its_fields_masked_where_it_says(
    bus: dict[str, Any], registry: BusRegistry
) -> None:
    agreement = registry.subscriptions["tra-citizen-identity"]
    [message] = operation_messages(bus, "tra.receive.tra-citizen-identity")
    schema = message["payload"]["schema"]
    assert [f["name"] for f in schema["fields"]] == agreement.fields
    phone = next(f for f in schema["fields"] if f["name"] == "phoneNumber")
    assert phone["type"] == ["null", "string"]
    assert message["x-govesb-agreement"]["masked"] == ["phoneNumber"]
    assert message["x-govesb-agreement"]["purpose"] == agreement.purpose
    assert "phoneNumber" in message["x-govesb-pii"]
    assert "| `phoneNumber` | null | string | yes, masked |" in message["description"]
    example = message["examples"][0]["payload"]
    assert list(example) == agreement.fields
    assert example["phoneNumber"] == "*********3456"
    assert example["nin"] == SAMPLES["tz.go.nida.CitizenRegistered"]["nin"]
    assert message["examples"][0]["headers"]["esb_subscription"] == "tra-citizen-identity"
    operation = bus["operations"]["tra.receive.tra-citizen-identity"]
    assert operation["bindings"]["kafka"]["groupId"]["pattern"] == r"^tra\..+$"


def test_an_http_agreement_is_json_read_by_the_bus_sink(bus: dict[str, Any]) -> None:
    [message] = operation_messages(bus, "utumishi.receive.utumishi-deaths")
    assert message["contentType"] == "application/json"
    assert "schemaIdLocation" not in message["bindings"]["kafka"]
    group = bus["operations"]["utumishi.receive.utumishi-deaths"]["bindings"]["kafka"]["groupId"]
    assert group["pattern"] == "^govesb-sink-utumishi$"


def test_a_pinned_version_is_described_from_that_version(registry: BusRegistry) -> None:
    event_type = registry.catalog.event_types["tz.go.tra.TaxPaymentReceived"]
    agreement = registry.subscriptions["ardhi-stamp-duty"]
    wider = agreement.model_copy(update={"fields": [*agreement.fields, "billReference"]})

    def fields(subscription: Subscription) -> list[str]:
        message = delivery_message(registry, event_type, subscription, SAMPLES)
        return [f["name"] for f in message["payload"]["schema"]["fields"]]

    assert "billReference" not in fields(wider)  # version 1 has no billReference
    assert "billReference" in fields(wider.model_copy(update={"schema_version": "latest"}))
    with pytest.raises(AsyncApiError, match="pins version 3"):
        fields(wider.model_copy(update={"schema_version": 3}))


def test_delivery_schemas_are_the_pipelines_with_simple_names(
    bus: dict[str, Any], registry: BusRegistry
) -> None:
    message = bus["components"]["messages"]["tz.go.esb.nida_births.BirthRegistered"]
    schema = message["payload"]["schema"]
    sex = next(f for f in schema["fields"] if f["name"] == "sex")["type"]
    assert (sex["name"], sex["namespace"]) == ("Sex", "tz.go.rita")
    registered = delivery_schema(
        registry.catalog.event_types["tz.go.rita.BirthRegistered"].schema,
        "tz.go.rita.BirthRegistered",
        registry.subscriptions["nida-births"],
    )
    assert next(f for f in registered["fields"] if f["name"] == "sex")["type"]["name"] == (
        "tz.go.rita.Sex"
    )
    canonical = fastavro.schema.to_parsing_canonical_form
    assert canonical(schema) == canonical(registered)


def test_every_example_payload_encodes_with_its_message_schema(bus: dict[str, Any]) -> None:
    checked = 0
    for message in bus["components"]["messages"].values():
        payload = message["payload"]
        if payload.get("schemaFormat") != AVRO_FORMAT:
            continue
        parsed = fastavro.parse_schema(payload["schema"])
        for example in message["examples"]:
            record = from_json(payload["schema"], example["payload"])
            fastavro.schemaless_writer(io.BytesIO(), parsed, record)  # raises if invalid
            checked += 1
    # every event type, every agreement's delivery, each service's request and answer
    assert checked == 9 + 9 + 2 * 2


def test_rejections_carry_every_reason_code_with_its_meaning(bus: dict[str, Any]) -> None:
    headers = bus["components"]["schemas"]["RejectionHeaders"]
    reason = headers["properties"]["esb_reason"]
    assert reason["enum"] == [str(r) for r in Reason]
    assert set(REASON_DOCS) == set(Reason)
    for code in Reason:
        assert f"- `{code}`: {REASON_DOCS[code]}" in reason["description"]
    assert headers["required"] == ["esb_reason", "esb_detail", "esb_source"]


def test_example_headers_are_the_declared_ones(bus: dict[str, Any]) -> None:
    ce = bus["components"]["schemas"]["CloudEventsHeaders"]
    for message in bus["components"]["messages"].values():
        for example in message.get("examples", []):
            headers = example["headers"]
            if "esb_reason" in headers:
                assert set(headers) <= set(
                    bus["components"]["schemas"]["RejectionHeaders"]["properties"]
                )
                continue
            assert set(ce["required"]) <= set(headers)
            assert set(headers) - set(ce["properties"]) <= {"esb_subscription"}
            fixed = message["headers"]["allOf"][1]["properties"]
            assert headers["ce_type"] == fixed["ce_type"]["const"]
            assert headers["content-type"] == fixed["content-type"]["const"]


def test_the_audit_schema_is_what_the_chain_writes(bus: dict[str, Any]) -> None:
    schema = bus["components"]["schemas"]["AuditRecord"]
    _, value = AuditChain("worker/host/1/0").append(
        outcome="rejected",
        event_id="0b6f7c1e-4a8e-4c1e-9d8e-2f0c6f3f9a10",
        publisher="nida",
        event_type="tz.go.nida.CitizenRegistered",
        payload_sha256="0" * 64,
        reason="bad-signature",
        source=("esb.ingress.nida", 0, 7),
    )
    record = json.loads(value)
    assert set(record) == set(schema["properties"])
    assert set(schema["required"]) <= set(record)
    assert record["outcome"] in schema["properties"]["outcome"]["enum"]


def test_an_unknown_institution_is_refused(registry: BusRegistry) -> None:
    with pytest.raises(AsyncApiError, match="no institution 'nobody'"):
        asyncapi_document(registry, SAMPLES, institution="nobody")


def test_a_field_added_to_the_catalogue_is_in_the_document(tmp_path: Path) -> None:
    shutil.copytree(REPO_ROOT / "schemas", tmp_path / "schemas")
    (tmp_path / "deploy").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "deploy" / "registry.yaml")
    before = asyncapi_document(_load(tmp_path / "deploy" / "registry.yaml"), SAMPLES)
    avsc = tmp_path / "schemas" / "nida" / "CitizenRegistered.avsc"
    schema = json.loads(avsc.read_text(encoding="utf-8"))
    schema["fields"].append(
        {"name": "email", "type": ["null", "string"], "default": None, "doc": "E-mail address."}
    )
    avsc.write_text(json.dumps(schema), encoding="utf-8")
    after = asyncapi_document(_load(tmp_path / "deploy" / "registry.yaml"), SAMPLES)

    def fields(document: dict[str, Any]) -> list[str]:
        message = document["components"]["messages"]["tz.go.nida.CitizenRegistered"]
        return [f["name"] for f in message["payload"]["schema"]["fields"]]

    assert fields(after) == [*fields(before), "email"]
    assert (
        "| `email` | null | string |  | E-mail address. |"
        in (after["components"]["messages"]["tz.go.nida.CitizenRegistered"]["description"])
    )
    assert after["info"]["version"] != before["info"]["version"]


def test_cli_writes_json_or_yaml_by_suffix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOVESB_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("GOVESB_SCHEMA_REGISTRY__URL", raising=False)
    app = build_app()
    as_json, as_yaml = tmp_path / "nida.json", tmp_path / "nida.yaml"
    for out in (as_json, as_yaml):
        result = runner.invoke(
            app, ["catalog", "asyncapi", str(EXAMPLE), "--institution", "nida", "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
    document = json.loads(as_json.read_text(encoding="utf-8"))
    assert yaml.safe_load(as_yaml.read_text(encoding="utf-8")) == document
    assert "&id" not in as_yaml.read_text(encoding="utf-8")  # no YAML anchors
    assert document["info"]["title"] == "GovESB: National Identification Authority (nida)"
    assert document["servers"]["govesb"]["host"] == PLACEHOLDER_HOST
    stdout = runner.invoke(app, ["catalog", "asyncapi", str(EXAMPLE), "--institution", "nida"])
    assert stdout.exit_code == 0
    assert yaml.safe_load(stdout.stdout) == document


def test_cli_server_comes_from_the_configured_bootstrap_or_the_option(tmp_path: Path) -> None:
    app = build_app()
    out = tmp_path / "bus.json"
    result = runner.invoke(
        app,
        [
            "--bootstrap", "kafka-1.bus.go.tz:9093,kafka-2.bus.go.tz:9093",
            "--schema-registry", "https://registry.bus.go.tz/apis/ccompat/v7",
            "catalog", "asyncapi", str(EXAMPLE), "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    server = json.loads(out.read_text(encoding="utf-8"))["servers"]["govesb"]
    assert server["host"] == "kafka-1.bus.go.tz:9093"
    assert server["bindings"]["kafka"]["schemaRegistryUrl"] == (
        "https://registry.bus.go.tz/apis/ccompat/v7"
    )
    result = runner.invoke(
        app, ["catalog", "asyncapi", str(EXAMPLE), "--kafka-host", "b:1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text(encoding="utf-8"))["servers"]["govesb"]["host"] == "b:1"


def test_cli_describes_sasl_without_any_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOVESB_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("GOVESB_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("GOVESB_KAFKA__SASL_USERNAME", "govesb-admin")
    monkeypatch.setenv("GOVESB_KAFKA__SASL_PASSWORD", "s3cret-sasl-password")
    out = tmp_path / "nida.json"
    result = runner.invoke(
        build_app(),
        ["catalog", "asyncapi", str(EXAMPLE), "--institution", "nida", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    document = json.loads(text)
    assert document["servers"]["govesb"]["security"] == [
        {"$ref": "#/components/securitySchemes/institution"}
    ]
    assert document["components"]["securitySchemes"]["institution"]["type"] == "scramSha512"
    assert "SASL_SSL" in document["servers"]["govesb"]["description"]
    assert "s3cret-sasl-password" not in text + result.output
    assert "govesb-admin" not in text


def test_cli_refuses_an_unknown_institution_and_an_unknown_suffix(tmp_path: Path) -> None:
    app = build_app()
    unknown = runner.invoke(app, ["catalog", "asyncapi", str(EXAMPLE), "--institution", "nobody"])
    assert unknown.exit_code == 1
    assert "no institution 'nobody'" in unknown.output
    suffix = runner.invoke(
        app, ["catalog", "asyncapi", str(EXAMPLE), "--out", str(tmp_path / "doc.txt")]
    )
    assert suffix.exit_code == 2
    assert not (tmp_path / "doc.txt").exists()


def test_the_services_an_institution_calls_have_their_request_and_granted_answer(
    registry: BusRegistry,
) -> None:
    tra = asyncapi_document(registry, SAMPLES, institution="tra")
    call = tra["operations"]["tra.call.VERIFY_NIN"]
    assert call["action"] == "send"
    assert call["channel"] == {"$ref": "#/channels/ingress"}
    assert call["reply"]["channel"] == {"$ref": "#/channels/reply"}
    assert tra["channels"]["reply"]["address"] == "esb.reply.tra"
    [reply] = [
        tra["components"]["messages"][r["$ref"].split("/")[-1]]
        for r in tra["channels"]["reply"]["messages"].values()
    ]
    grant = registry.grants["tra-verify-nin"]
    assert list(reply["payload"]["properties"]) == grant.fields
    assert "masked" in reply["payload"]["properties"]["phoneNumber"]["description"]
    assert "middleName" not in reply["payload"]["properties"]  # not granted to tra
    # tra serves TIN_STATUS Kafka-natively: it reads esb.request.tra and answers on its ingress
    serve = tra["operations"]["tra.serve.TIN_STATUS"]
    assert serve["action"] == "receive"
    assert tra["channels"]["request"]["address"] == "esb.request.tra"
    # moh may call VERIFY_NIN too, but that is moh's: not in tra's view
    assert "moh.call.VERIFY_NIN" not in tra["operations"]
