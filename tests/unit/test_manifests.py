"""The deployment manifests in ``deploy/``: well-formed, consistent with each other and current.

Compose: every service runs something, GovESB services are configured only by ``GOVESB_*``
variables and report health, nothing depends on or mounts what is not there. Kubernetes: every
resource is named, on a served API version, probed, bounded and non-root, and every Service
reaches a Deployment's port.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.settings import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yml"
YAML_FILES = sorted(
    path
    for path in DEPLOY.rglob("*")
    if path.suffix in (".yml", ".yaml") and not {".cache", "target"} & set(path.parts)
)
# API versions Kubernetes no longer serves (and Strimzi's pre-v1beta2 ones).
REMOVED_APIS = {
    "extensions/v1beta1",
    "apps/v1beta1",
    "apps/v1beta2",
    "batch/v1beta1",
    "policy/v1beta1",
    "networking.k8s.io/v1beta1",
    "rbac.authorization.k8s.io/v1beta1",
    "autoscaling/v2beta1",
    "autoscaling/v2beta2",
    "admissionregistration.k8s.io/v1beta1",
    "apiextensions.k8s.io/v1beta1",
    "storage.k8s.io/v1beta1",
    "discovery.k8s.io/v1beta1",
    "flowcontrol.apiserver.k8s.io/v1beta1",
    "flowcontrol.apiserver.k8s.io/v1beta2",
    "flowcontrol.apiserver.k8s.io/v1beta3",
    "kafka.strimzi.io/v1alpha1",
    "kafka.strimzi.io/v1beta1",
}


def pinned(image: str) -> bool:
    return ":" in image and not image.endswith(":latest")


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    assert load_all(path), f"{path} has no document"


# --------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def govesb_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if str(service.get("image", "")).startswith("govesb:")
    }


def long_running(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in govesb_services(compose).items() if s.get("restart") != "no"}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_is_the_compose_spec_without_a_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose
    assert {"kafka", "registry", "init", "worker", "gateway", "sink-utumishi"} <= set(
        compose["services"]
    )
    assert {"prometheus", "grafana"} <= set(compose["services"])


def test_every_service_has_an_image_or_a_build(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, name
        image = str(service.get("image", ""))
        assert pinned(image), f"{name}: pin the image tag"
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), name


def test_govesb_services_take_only_govesb_variables_and_report_health(
    compose: dict[str, Any],
) -> None:
    assert set(long_running(compose)) == {"worker", "gateway", "sink-utumishi"}
    for name, service in govesb_services(compose).items():
        env = environment(service)
        assert env, name
        assert all(key.startswith("GOVESB_") for key in env), (name, sorted(env))
    for name, service in long_running(compose).items():
        env = environment(service)
        assert env["GOVESB_WEB_HOST"] == "0.0.0.0", name  # noqa: S104 - inside the container
        test = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{env['GOVESB_WEB_PORT']}/health" in test, name
    for name in ("kafka", "registry"):
        assert compose["services"][name]["healthcheck"]["test"], name


def test_the_gateway_and_grafana_are_published(compose: dict[str, Any]) -> None:
    assert "8088:8088" in compose["services"]["gateway"]["ports"]
    assert "3000:3000" in compose["services"]["grafana"]["ports"]


def test_depends_on_names_existing_services(compose: dict[str, Any]) -> None:
    services = set(compose["services"])
    for name, service in compose["services"].items():
        for target in service.get("depends_on", []):
            assert target in services, f"{name} depends on unknown {target}"
    for name in ("worker", "gateway", "sink-utumishi"):
        assert compose["services"][name]["depends_on"]["init"] == {
            "condition": "service_completed_successfully"
        }


def test_mounted_host_paths_exist_and_named_volumes_are_declared(
    compose: dict[str, Any],
) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_demo_keys_are_mounted_read_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            if "demo-keys" in volume:
                assert volume.endswith(":ro"), name


def test_prometheus_scrapes_the_compose_services_on_their_ports(compose: dict[str, Any]) -> None:
    config = DEPLOY / "prometheus" / "prometheus.yml"
    if not config.exists():
        pytest.skip("deploy/prometheus/prometheus.yml not written yet")
    ports = {
        name: environment(service)["GOVESB_WEB_PORT"]
        for name, service in long_running(compose).items()
    }
    targets = {
        target
        for job in yaml.safe_load(config.read_text(encoding="utf-8"))["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert targets >= {f"{name}:{port}" for name, port in ports.items()}
    for target in targets:
        host, _ = target.rsplit(":", 1)
        assert host in compose["services"], target


def test_grafana_loads_dashboards_from_where_compose_mounts_them(
    compose: dict[str, Any],
) -> None:
    providers = DEPLOY / "grafana" / "provisioning" / "dashboards"
    if not providers.exists():
        pytest.skip("deploy/grafana/provisioning/dashboards not written yet")
    mounts = {
        volume.split(":")[1]
        for volume in compose["services"]["grafana"]["volumes"]
        if volume.startswith("./grafana/dashboards:")
    }
    for path in sorted(providers.glob("*.y*ml")):
        for provider in yaml.safe_load(path.read_text(encoding="utf-8"))["providers"]:
            assert provider["options"]["path"] in mounts, path


def test_the_image_runs_as_a_non_root_user() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert "FROM python:3.11-slim" in dockerfile
    assert re.search(r"^USER (?!root|0\b)\S+", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["govesb"]' in dockerfile
    assert "COPY schemas/" in dockerfile
    ignored = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv/", ".cache/", ".git/"} <= set(ignored)


# --------------------------------------------------------------------------- kubernetes


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, document)
        for path in sorted(K8S.rglob("*.y*ml"))
        if path.name != "kustomization.yaml"
        for document in load_all(path)
    ]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [document for _, document in k8s_documents() if document["kind"] == kind]


def workloads() -> list[dict[str, Any]]:
    return of_kind("Deployment") + of_kind("Job")


def test_every_resource_is_named_on_a_served_api() -> None:
    documents = k8s_documents()
    assert documents
    for path, document in documents:
        where = f"{path.relative_to(K8S)}: {document.get('kind')}"
        assert document.get("apiVersion"), where
        assert document.get("kind"), where
        assert document.get("metadata", {}).get("name"), where
        assert document["apiVersion"] not in REMOVED_APIS, where
        if document["apiVersion"].startswith("kafka.strimzi.io/"):
            assert document["apiVersion"] == "kafka.strimzi.io/v1beta2", where
        assert document["kind"] != "Secret", f"{where}: secrets are created, never committed"


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    files = {
        path.relative_to(K8S).as_posix()
        for path in K8S.rglob("*.y*ml")
        if path.name != "kustomization.yaml"
    }
    assert set(kustomization["resources"]) == files


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_the_manifests() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0, built.stderr
    documents = [d for d in yaml.safe_load_all(built.stdout) if d]
    assert {d["metadata"]["namespace"] for d in documents} == {"govesb"}


def test_deployments_select_their_own_pods() -> None:
    deployments = of_kind("Deployment")
    assert {d["metadata"]["name"] for d in deployments} == {
        "govesb-worker",
        "govesb-gateway",
        "govesb-sink-utumishi",
    }
    for deployment in deployments:
        assert deployment["apiVersion"] == "apps/v1"
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector, deployment["metadata"]["name"]
        assert selector.items() <= labels.items(), deployment["metadata"]["name"]


def container_ports(container: dict[str, Any]) -> set[object]:
    return {p["containerPort"] for p in container.get("ports", [])} | {
        p["name"] for p in container.get("ports", []) if "name" in p
    }


def test_containers_are_probed_bounded_and_not_root() -> None:
    for workload in workloads():
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            image = container["image"]
            assert pinned(image), where
            resources = container["resources"]
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[bound]), f"{where} {bound}"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            if workload["kind"] != "Deployment":
                continue
            for probe in ("readinessProbe", "livenessProbe"):
                check = container[probe]["httpGet"]
                assert check["path"] == "/health", f"{where} {probe}"
                assert check["port"] in container_ports(container), f"{where} {probe}"


def test_services_reach_a_deployment_port() -> None:
    deployments = of_kind("Deployment")
    services = of_kind("Service")
    assert services
    for service in services:
        selector = service["spec"]["selector"]
        matching = [
            d
            for d in deployments
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matching, f"{service['metadata']['name']} selects no Deployment"
        ports = set().union(
            *(
                container_ports(c)
                for d in matching
                for c in d["spec"]["template"]["spec"]["containers"]
            )
        )
        for port in service["spec"]["ports"]:
            assert port.get("targetPort", port["port"]) in ports, service["metadata"]["name"]


def test_workloads_use_only_config_maps_and_secrets_that_are_defined_or_documented() -> None:
    config_maps = {c["metadata"]["name"] for c in of_kind("ConfigMap")}
    kustomization = (K8S / "kustomization.yaml").read_text(encoding="utf-8")
    users = {u["metadata"]["name"] for u in of_kind("KafkaUser")}
    cluster = of_kind("Kafka")[0]["metadata"]["name"]
    generated = users | {f"{cluster}-cluster-ca-cert"}  # written by the Strimzi operators
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        secrets: set[str] = set()
        maps: set[str] = set()
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    maps.add(source["configMapRef"]["name"])
                if "secretRef" in source:
                    secrets.add(source["secretRef"]["name"])
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secrets.add(ref["name"])
                map_ref = variable.get("valueFrom", {}).get("configMapKeyRef")
                if map_ref:
                    maps.add(map_ref["name"])
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                secrets.add(volume["secret"]["secretName"])
            if "configMap" in volume:
                maps.add(volume["configMap"]["name"])
        for name in maps - config_maps:
            assert f"create configmap {name}" in kustomization, name
        for name in secrets - generated:
            assert f"create secret generic {name}" in kustomization, name


def test_strimzi_runs_kraft_with_tls_scram_and_acls() -> None:
    (kafka,) = of_kind("Kafka")
    pools = of_kind("KafkaNodePool")
    cluster = kafka["metadata"]["name"]
    assert pools
    assert {"controller", "broker"} <= {role for pool in pools for role in pool["spec"]["roles"]}
    for pool in pools:
        assert pool["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    assert "zookeeper" not in kafka["spec"]
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert listener["tls"] is True
    assert listener["authentication"] == {"type": "scram-sha-512"}
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    for resource in of_kind("KafkaTopic") + of_kind("KafkaUser"):
        assert resource["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    for user in of_kind("KafkaUser"):
        for acl in user["spec"]["authorization"]["acls"]:
            assert "operation" not in acl, "the deprecated `operation`; use `operations`"


def test_every_process_has_its_kafka_user() -> None:
    users = {u["metadata"]["name"] for u in of_kind("KafkaUser")}
    for workload in workloads():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            env = {v["name"]: v for v in container.get("env", [])}
            assert env["GOVESB_KAFKA__SASL_USERNAME"]["value"] in users
            password = env["GOVESB_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert password == {
                "name": env["GOVESB_KAFKA__SASL_USERNAME"]["value"],
                "key": "password",
            }


def test_no_published_demo_key_is_configured_on_kubernetes() -> None:
    from streams.settings import DEMO_KEY_IDS

    for path in sorted(K8S.rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert not [key_id for key_id in DEMO_KEY_IDS if key_id in text], path
        assert ".key.pem=deploy/demo-keys" not in text, path


def test_each_bus_process_signs_with_the_key_of_its_role() -> None:
    """Worker and sink: the delivery key; the gateway: its own; the worker knows the gateway's."""

    def env(name: str) -> dict[str, Any]:
        deployment = next(d for d in of_kind("Deployment") if d["metadata"]["name"] == name)
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        return {v["name"]: v.get("valueFrom", {}).get("configMapKeyRef", {}).get("key")
                or v.get("value") for v in container["env"]}  # fmt: skip

    worker, sink, gateway = env("govesb-worker"), env("govesb-sink-utumishi"), env("govesb-gateway")
    assert worker["GOVESB_SIGNING_KEY_ID"] == sink["GOVESB_SIGNING_KEY_ID"] == "delivery-key-id"
    assert gateway["GOVESB_SIGNING_KEY_ID"] == worker["GOVESB_GATEWAY_KEY_IDS"] == "gateway-key-id"
    assert gateway["GOVESB_SIGNING_KEY_FILE"] != worker["GOVESB_SIGNING_KEY_FILE"]
