"""``deploy/CONFIGURATION.md``: current, no secret value shown, and every variable a manifest
sets is a real setting of the process it configures (a typo in a manifest fails here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from connectors.settings import GatewaySettings, SinkSettings
from deploy import config_reference
from deploy.config_reference import OUTPUT, PROCESSES, accepts, render, variables
from streams.settings import REPO_ROOT, CliSettings, WorkerSettings

DEPLOY = REPO_ROOT / "deploy"


def test_the_committed_reference_is_current() -> None:
    assert OUTPUT.read_text(encoding="utf-8") == render(), (
        "deploy/CONFIGURATION.md is stale: run python -m deploy.config_reference"
    )


def test_check_fails_on_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "deploy" / "CONFIGURATION.md"
    stale.parent.mkdir()
    monkeypatch.setattr(config_reference, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(config_reference, "OUTPUT", stale)
    stale.write_text(render().replace("GOVESB_WEB_PORT", "GOVESB_WEB_PROT"), encoding="utf-8")
    assert config_reference.main(["--check"]) == 1
    assert config_reference.main([]) == 0
    assert config_reference.main(["--check"]) == 0


def test_nested_settings_are_expanded_with_double_underscores() -> None:
    names = {v.name for v in variables(WorkerSettings)}
    assert {"GOVESB_KAFKA__BOOTSTRAP_SERVERS", "GOVESB_SCHEMA_REGISTRY__URL"} <= names
    assert "GOVESB_SIGNING_KEY_FILE" in names
    assert "GOVESB_TOPICS__RETENTION_DAYS" in {v.name for v in variables(CliSettings)}


def test_secrets_show_no_default() -> None:
    secrets = {
        v.name: v.default for process in PROCESSES for v in variables(process.model) if v.secret
    }
    assert {
        "GOVESB_KAFKA__SASL_PASSWORD",
        "GOVESB_SCHEMA_REGISTRY__PASSWORD",
        "GOVESB_SECRETS__<SECRET_REF>",
        "GOVESB_CLIENTS__<INSTITUTION>",
    } <= set(secrets)
    assert set(secrets.values()) == {"(secret)"}
    for line in render().splitlines():
        name = re.match(r"\| `([^`]+)` \|", line)
        if name and name.group(1) in secrets:
            assert line.split(" | ")[2] == "(secret)", line


def test_a_mapping_accepts_any_key_and_nothing_else_is_guessed() -> None:
    assert accepts(SinkSettings, "GOVESB_SECRETS__UTUMISHI_SINK_TOKEN")
    assert accepts(SinkSettings, "govesb_secrets__utumishi_sink_token")
    assert not accepts(SinkSettings, "GOVESB_SECRETS__")
    assert not accepts(WorkerSettings, "GOVESB_SECRETS__UTUMISHI_SINK_TOKEN")
    assert accepts(GatewaySettings, "GOVESB_CLIENTS__RITA")
    assert not accepts(WorkerSettings, "GOVESB_KAFKA__BOOTSTRAP_SERVER")
    assert not accepts(WorkerSettings, "GOVESB_CATALOG")


# --------------------------------------------------------------------------- manifests


def process_model(argv: list[str]) -> type[BaseSettings]:
    """The settings model of the process a container's command line starts."""
    words = " ".join(argv).split()
    if "http-sink" in words:
        return SinkSettings
    if "gateway" in words:
        return GatewaySettings
    if words[:1] == ["worker"]:
        return WorkerSettings
    return CliSettings


def compose_settings() -> list[tuple[str, type[BaseSettings], set[str]]]:
    compose = yaml.safe_load((DEPLOY / "compose.yml").read_text(encoding="utf-8"))
    found = []
    for name, service in compose["services"].items():
        if not str(service.get("image", "")).startswith("govesb:"):
            continue
        env = service.get("environment") or {}
        names = {item.split("=", 1)[0] for item in env} if isinstance(env, list) else set(env)
        argv = [*service.get("entrypoint", []), *service.get("command", [])]
        found.append((f"compose.yml {name}", process_model(argv), names))
    return found


def k8s_settings() -> list[tuple[str, type[BaseSettings], set[str]]]:
    documents: list[dict[str, Any]] = [
        document
        for path in sorted((DEPLOY / "k8s").rglob("*.y*ml"))
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if document and "kind" in document
    ]
    config_maps = {
        d["metadata"]["name"]: set(d.get("data", {})) for d in documents if d["kind"] == "ConfigMap"
    }
    found = []
    for document in documents:
        if document["kind"] not in ("Deployment", "Job"):
            continue
        for container in document["spec"]["template"]["spec"]["containers"]:
            names = {variable["name"] for variable in container.get("env", [])}
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    names |= config_maps[source["configMapRef"]["name"]]
            argv = [*container.get("command", []), *container.get("args", [])]
            where = f"k8s {document['metadata']['name']}/{container['name']}"
            found.append((where, process_model(argv), names))
    return found


def test_the_manifests_start_each_kind_of_process() -> None:
    started = {model for _, model, _ in compose_settings()}
    assert started == {WorkerSettings, SinkSettings, GatewaySettings, CliSettings}
    assert {model for _, model, _ in k8s_settings()} == started


@pytest.mark.parametrize(
    ("where", "model", "names"),
    [pytest.param(*found, id=found[0]) for found in compose_settings() + k8s_settings()],
)
def test_every_variable_a_manifest_sets_is_a_setting_of_that_process(
    where: str, model: type[BaseSettings], names: set[str]
) -> None:
    assert names, where
    for name in sorted(names):
        assert name.startswith("GOVESB_"), f"{where}: {name}"
        assert accepts(model, name), f"{where}: {name} is not a setting of {model.__name__}"


def test_the_image_sets_only_real_settings() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    names = set(re.findall(r"\b(GOVESB_[A-Z0-9_]+)=", dockerfile))
    assert names
    for name in names:
        assert any(accepts(process.model, name) for process in PROCESSES), name
