"""The ACL model ``govesb registry apply`` sets and ``registry export --strimzi`` renders."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from typer.testing import CliRunner

from streams.cli.main import build_app
from streams.registry import acls
from streams.registry.acls import AclBinding, acl_bindings, bus_acls, plan_acls
from streams.registry.model import BusRegistry, load_registry
from streams.settings import REPO_ROOT, KafkaSettings

app = build_app()

EXAMPLE = REPO_ROOT / "deploy" / "registry.example.yaml"


@pytest.fixture(scope="module")
def registry() -> BusRegistry:
    loaded, problems = load_registry(EXAMPLE)
    assert problems == []
    assert loaded is not None
    return loaded


@pytest.fixture(scope="module")
def desired(registry: BusRegistry) -> set[AclBinding]:
    return acl_bindings(bus_acls(registry))


def _allow(user: str, kind: str, name: str, operation: str, pattern: str = "LITERAL") -> AclBinding:
    return AclBinding(f"User:{user}", kind, name, pattern, operation)


def test_an_institution_gets_one_allow_binding_per_operation_on_its_own_resources(
    desired: set[AclBinding],
) -> None:
    assert {acl for acl in desired if acl.principal == "User:nida"} == {
        _allow("nida", "TOPIC", "esb.ingress.nida", "WRITE"),
        _allow("nida", "TOPIC", "esb.ingress.nida", "DESCRIBE"),
        _allow("nida", "TOPIC", "esb.deliver.nida", "READ"),
        _allow("nida", "TOPIC", "esb.deliver.nida", "DESCRIBE"),
        _allow("nida", "TOPIC", "esb.rejected.nida", "READ"),
        _allow("nida", "TOPIC", "esb.rejected.nida", "DESCRIBE"),
        _allow("nida", "GROUP", "nida.", "READ", pattern="PREFIXED"),
    }
    assert all(acl.permission == "ALLOW" and acl.host == "*" for acl in desired)


def test_the_bindings_are_the_strimzi_users_acls(registry: BusRegistry) -> None:
    """Apply and export share one model: every Strimzi ACL operation is one binding."""
    from streams.registry.strimzi import kafka_users

    from_strimzi = {
        AclBinding(
            f"User:{user['metadata']['name']}",
            acl["resource"]["type"].upper(),
            acl["resource"]["name"],
            "PREFIXED" if acl["resource"]["patternType"] == "prefix" else "LITERAL",
            re.sub(r"(?<=[a-z])(?=[A-Z])", "_", operation).upper(),  # DescribeConfigs
        )
        for user in kafka_users(registry, cluster="govesb")
        for acl in user["spec"]["authorization"]["acls"]
        for operation in acl["operations"]
    }
    assert from_strimzi == acl_bindings(bus_acls(registry))


def test_the_worker_group_is_the_one_given(registry: BusRegistry) -> None:
    bindings = acl_bindings(bus_acls(registry, worker_group="pipeline-b"))
    worker = {a for a in bindings if a.principal == "User:govesb-worker"}
    groups = {a.name for a in worker if a.resource_type == "GROUP"}
    assert groups == {"pipeline-b"}


def test_strimzi_operation_names_become_kafka_ones() -> None:
    rule = acls.AclRule("topic", "t", ("Read", "IdempotentWrite", "DescribeConfigs"))
    assert {a.operation for a in acl_bindings({"u": [rule]})} == {
        "READ",
        "IDEMPOTENT_WRITE",
        "DESCRIBE_CONFIGS",
    }


def test_a_fresh_cluster_gets_everything_and_a_second_apply_nothing(
    desired: set[AclBinding],
) -> None:
    first = plan_acls(desired, set(), ["nida"])
    assert set(first.create) == desired
    assert first.delete == []
    second = plan_acls(desired, desired, ["nida"])
    assert (second.create, second.delete, second.kept) == ([], [], len(desired))


def test_what_the_registry_no_longer_implies_is_deleted_and_others_acls_kept(
    registry: BusRegistry, desired: set[AclBinding]
) -> None:
    gone = acl_bindings({"zanzibar": acls.institution_acls("zanzibar")})  # removed institution
    stray = {
        _allow("nida", "TOPIC", "esb.audit", "READ"),  # granted by hand to a managed principal
        AclBinding("User:rita", "TOPIC", "esb.deliver.nida", "LITERAL", "READ", "DENY"),
        _allow("govesb-sink-old", "TOPIC", "esb.dlq.old", "WRITE"),  # a sink no longer run
    }
    unmanaged = {
        _allow("ops-team", "TOPIC", "esb.", "DESCRIBE", pattern="PREFIXED"),
        _allow("brand-new", "TOPIC", "esb.ingress.brand-new", "WRITE"),  # never in the registry
        AclBinding("Group:nida", "TOPIC", "x", "LITERAL", "READ"),  # not a user principal
    }
    institutions = [*registry.institutions, "zanzibar"]
    plan = plan_acls(desired, desired | gone | stray | unmanaged, institutions)
    assert plan.create == []
    assert set(plan.delete) == gone | stray
    assert plan.kept == len(desired)


def test_only_users_of_the_bus_and_of_known_institutions_are_managed() -> None:
    assert acls.is_managed("User:govesb-anything", [])
    assert acls.is_managed("User:nida", ["nida"])
    assert not acls.is_managed("User:nida", ["rita"])
    assert not acls.is_managed("User:admin", ["nida"])
    assert not acls.is_managed("Group:govesb-worker", [])


def test_a_binding_reads_as_a_sentence() -> None:
    assert str(_allow("nida", "GROUP", "nida.", "READ", "PREFIXED")) == (
        "User:nida ALLOW READ group nida.*"
    )


def test_the_admin_client_connects_as_every_other_client() -> None:
    secure = KafkaSettings(
        bootstrap_servers="k1:9093,k2:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="admin",
        sasl_password=SecretStr("s3cret"),
        ssl_cafile=Path("/etc/govesb/ca.pem"),
    )
    config = acls.admin_config(secure)
    assert {k: v for k, v in config.items() if k != "log_level"} == {
        "bootstrap.servers": "k1:9093,k2:9093",
        "client.id": "govesb",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "admin",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/govesb/ca.pem",
    }
    plain = acls.admin_config(KafkaSettings())
    assert plain["security.protocol"] == "plaintext"
    assert not any(key.startswith(("sasl.", "ssl.")) for key in plain)


def test_apply_refuses_an_institution_named_like_a_bus_user(tmp_path: Path) -> None:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    document["catalog"] = str(REPO_ROOT / "schemas" / "catalog.yaml")
    document["institutions"].append({"id": "govesb-gateway", "name": "?", "systems": ["x"]})
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    # No broker at this address: the refusal comes before any connection.
    result = CliRunner().invoke(app, ["--bootstrap", "127.0.0.1:9", "registry", "apply", str(path)])
    assert result.exit_code == 1
    assert "institutions[8].id: 'govesb-gateway'" in result.stderr
