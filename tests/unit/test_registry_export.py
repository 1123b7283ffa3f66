"""``govesb registry export --strimzi``: topics as ``apply`` makes them, least-privilege users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from streams.cli.main import build_app
from streams.registry.model import BusRegistry, load_registry
from streams.registry.strimzi import (
    FILE_NAMES,
    GATEWAY_USER,
    WORKER_USER,
    files_by_kind,
    kafka_topics,
    kafka_users,
    sink_user,
    strimzi_resources,
)
from streams.registry.sync import desired_topics
from streams.settings import REPO_ROOT, CliSettings, TopicSettings

app = build_app()

EXAMPLE = REPO_ROOT / "deploy" / "registry.example.yaml"
COMMITTED = REPO_ROOT / "deploy" / "k8s" / "strimzi"
runner = CliRunner()

Acl = tuple[str, str, str, frozenset[str]]


@pytest.fixture(scope="module")
def registry() -> BusRegistry:
    loaded, problems = load_registry(EXAMPLE)
    assert problems == []
    assert loaded is not None
    return loaded


def acls_of(users: list[dict[str, Any]], name: str) -> set[Acl]:
    user = next(u for u in users if u["metadata"]["name"] == name)
    assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
    assert user["spec"]["authorization"]["type"] == "simple"
    return {
        (
            acl["resource"]["type"],
            acl["resource"]["name"],
            acl["resource"]["patternType"],
            frozenset(acl["operations"]),
        )
        for acl in user["spec"]["authorization"]["acls"]
    }


def test_an_institution_writes_its_ingress_and_reads_only_its_own_deliveries(
    registry: BusRegistry,
) -> None:
    users = kafka_users(registry, cluster="govesb")
    assert acls_of(users, "nida") == {
        ("topic", "esb.ingress.nida", "literal", frozenset({"Write", "Describe"})),
        ("topic", "esb.deliver.nida", "literal", frozenset({"Read", "Describe"})),
        ("topic", "esb.rejected.nida", "literal", frozenset({"Read", "Describe"})),
        ("group", "nida.", "prefix", frozenset({"Read"})),
    }
    for institution in registry.institutions:
        for kind, name, _, _ in acls_of(users, institution):
            assert name.endswith(f".{institution}") or name == f"{institution}.", (kind, name)


def test_the_bus_processes_get_what_their_code_does_and_no_more(registry: BusRegistry) -> None:
    users = kafka_users(registry, cluster="govesb")
    ids = set(registry.institutions)
    worker = acls_of(users, WORKER_USER)
    reads = {name for kind, name, _, ops in worker if kind == "topic" and "Read" in ops}
    writes = {name for kind, name, _, ops in worker if kind == "topic" and "Write" in ops}
    assert reads == {f"esb.ingress.{i}" for i in ids} | {"esb.registry", "esb.duplicates"}
    assert writes == (
        {f"esb.deliver.{i}" for i in ids}
        | {f"esb.rejected.{i}" for i in ids}
        | {"esb.audit", "esb.duplicates", "esb.tickets"}
        | {"esb.request.nida", "esb.request.tra"}  # the providers of the example's services
        | {"esb.reply.tra", "esb.reply.moh", "esb.reply.brela"}  # the institutions granted one
    )
    assert ("group", "govesb-pipeline", "literal", frozenset({"Read"})) in worker

    gateway = acls_of(users, GATEWAY_USER)
    assert {name for _, name, _, ops in gateway if "Write" in ops} == {
        f"esb.ingress.{i}" for i in ids
    } | {"esb.audit"}  # the calls it answered timed-out
    assert {name for _, name, _, ops in gateway if "Read" in ops} == {
        "esb.registry",
        "esb.tickets",
        "esb.reply.tra",
        "esb.reply.moh",
        "esb.reply.brela",
    }
    # nida serves VERIFY_NIN over HTTP: its provider connector reads its requests and
    # answers on nida's ingress; a Kafka-native provider (tra) reads them itself.
    assert acls_of(users, "govesb-provider-nida") == {
        ("topic", "esb.request.nida", "literal", frozenset({"Read", "Describe"})),
        ("group", "govesb-provider-nida", "literal", frozenset({"Read"})),
        ("topic", "esb.registry", "literal", frozenset({"Read", "Describe"})),
        ("topic", "esb.ingress.nida", "literal", frozenset({"Write", "Describe"})),
        ("topic", "esb.audit", "literal", frozenset({"Write", "Describe"})),
    }
    assert ("topic", "esb.request.tra", "literal", frozenset({"Read", "Describe"})) in acls_of(
        users, "tra"
    )
    assert ("topic", "esb.reply.tra", "literal", frozenset({"Read", "Describe"})) in acls_of(
        users, "tra"
    )

    assert acls_of(users, sink_user("utumishi")) == {
        ("topic", "esb.deliver.utumishi", "literal", frozenset({"Read", "Describe"})),
        ("group", "govesb-sink-utumishi", "literal", frozenset({"Read"})),
        ("topic", "esb.registry", "literal", frozenset({"Read", "Describe"})),
        ("topic", "esb.dlq.utumishi", "literal", frozenset({"Write", "Describe"})),
        ("topic", "esb.audit", "literal", frozenset({"Write", "Describe"})),
    }
    # Only subscribers with an agreement delivered over HTTP run a sink.
    assert {u["metadata"]["name"] for u in users if "-sink-" in u["metadata"]["name"]} == {
        "govesb-sink-utumishi"
    }


def test_topics_are_those_registry_apply_creates(registry: BusRegistry) -> None:
    settings = TopicSettings(replication_factor=2, retention_days=3)
    exported = kafka_topics(registry, settings, cluster="bus", namespace="esb")
    expected = {
        spec.name: (spec.partitions, spec.config) for spec in desired_topics(registry, settings)
    }
    assert {
        t["spec"]["topicName"]: (t["spec"]["partitions"], t["spec"]["config"]) for t in exported
    } == expected
    # 4 per institution, audit/duplicates/tickets/registry, 2 request and 3 reply topics
    assert len(exported) == 4 * len(registry.institutions) + 4 + 2 + 3
    for topic in exported:
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "bus"
        assert topic["metadata"]["namespace"] == "esb"
        assert topic["spec"]["replicas"] == 2
    by_name = {t["spec"]["topicName"]: t["spec"] for t in exported}
    assert by_name["esb.registry"]["config"]["cleanup.policy"] == "compact"
    assert by_name["esb.registry"]["partitions"] == 1
    assert by_name["esb.ingress.nida"]["config"]["retention.ms"] == str(3 * 24 * 3600 * 1000)
    default = kafka_topics(registry, TopicSettings(), cluster="bus")
    assert {t["spec"]["replicas"] for t in default} == {3}


def test_the_committed_strimzi_resources_are_a_fresh_export(registry: BusRegistry) -> None:
    fresh = files_by_kind(
        strimzi_resources(registry, TopicSettings(), cluster="govesb"),
        "deploy/registry.example.yaml",
        "govesb",
    )
    committed = {path.name: path.read_text(encoding="utf-8") for path in COMMITTED.iterdir()}
    assert set(committed) == set(FILE_NAMES.values())
    assert committed == fresh, (
        "deploy/k8s/strimzi is stale: run `govesb registry export --strimzi "
        "--out deploy/k8s/strimzi deploy/registry.example.yaml`"
    )


def test_the_command_writes_one_file_per_kind(registry: BusRegistry, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "registry",
            "export",
            "--strimzi",
            "--namespace",
            "esb",
            "--out",
            str(tmp_path),
            str(EXAMPLE),
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILE_NAMES.values())
    written = [
        document
        for path in sorted(tmp_path.iterdir())
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8"))
    ]
    expected = strimzi_resources(registry, CliSettings().topics, cluster="govesb", namespace="esb")
    assert sorted(written, key=repr) == sorted(expected, key=repr)
    assert "41 KafkaTopic, 14 KafkaUser" in result.stderr  # + services' topics, provider user


def test_the_command_writes_yaml_to_stdout() -> None:
    result = runner.invoke(
        app, ["registry", "export", "--strimzi", "--cluster", "c1", str(EXAMPLE)]
    )
    assert result.exit_code == 0, result.output
    documents = list(yaml.safe_load_all(result.stdout))
    assert {d["kind"] for d in documents} == {"KafkaTopic", "KafkaUser"}
    assert {d["metadata"]["labels"]["strimzi.io/cluster"] for d in documents} == {"c1"}


def _broken(tmp_path: Path, change: Any) -> Path:
    document = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    document["catalog"] = str(REPO_ROOT / "schemas" / "catalog.yaml")
    change(document)
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def test_a_lint_error_exits_1_naming_the_file_and_the_yaml_path(tmp_path: Path) -> None:
    def unknown_subscriber(document: dict[str, Any]) -> None:
        document["subscriptions"][0]["subscriber"] = "nobody"

    path = _broken(tmp_path, unknown_subscriber)
    result = runner.invoke(
        app, ["registry", "export", "--strimzi", "--out", str(tmp_path / "out"), str(path)]
    )
    assert result.exit_code == 1
    assert "subscriptions[0].subscriber: unknown institution 'nobody'" in result.stderr
    assert str(path) in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_institution_may_not_take_a_bus_user_name(tmp_path: Path) -> None:
    def impostor(document: dict[str, Any]) -> None:
        document["institutions"].append({"id": "govesb-worker", "name": "?", "systems": ["x"]})

    path = _broken(tmp_path, impostor)
    result = runner.invoke(app, ["registry", "export", "--strimzi", str(path)])
    assert result.exit_code == 1
    assert "institutions[8].id: 'govesb-worker'" in result.stderr
    assert result.stdout == ""


def test_the_format_must_be_chosen() -> None:
    result = runner.invoke(app, ["registry", "export", str(EXAMPLE)])
    assert result.exit_code == 2
    assert "--strimzi" in result.stderr
