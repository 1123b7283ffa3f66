"""The launcher's pure parts and its errors, without starting anything."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from deploy.kafka import launcher, runtime


def test_cluster_ids_are_urlsafe_base64_of_16_bytes_and_never_start_with_a_dash() -> None:
    ids = {launcher.new_cluster_id() for _ in range(500)}
    assert len(ids) == 500
    for cluster_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)
        assert not cluster_id.startswith("-")


def test_broker_properties_describe_a_single_node_kraft_broker_on_loopback(
    tmp_path: Path,
) -> None:
    text = launcher.broker_properties(tmp_path, 19092, 19093)
    props = dict(line.split("=", 1) for line in text.splitlines())
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == props["listeners"]
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert props["log.dirs"] == str(tmp_path / "log")
    assert props["offsets.topic.replication.factor"] == "1"


def _fake_tool(directory: Path, name: str, script: str) -> None:
    tool = directory / name
    tool.write_text(f"#!/bin/sh\n{script}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


def test_missing_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(runtime.LauncherError, match=r"Java not found on PATH.*Java 17\+"):
        runtime.require_java()


def test_old_java_is_refused_with_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_tool(tmp_path, "java", "echo 'openjdk version \"11.0.22\" 2024-01-16' >&2")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(runtime.LauncherError, match=r"is Java 11; GovESB needs Java 17"):
        runtime.require_java()


def test_java_17_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_tool(tmp_path, "java", "echo 'openjdk version \"17.0.15\" 2025-04-15' >&2")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert runtime.require_java() == str(tmp_path / "java")


def test_missing_maven_is_a_clear_error_before_any_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(runtime.LauncherError, match=r"Maven \(mvn\) not found on PATH"):
        runtime.fetch_runtime(tmp_path / "cache", say=lambda _: None)
    assert not (tmp_path / "cache" / "m2").exists()


def test_a_failed_download_names_the_runtime_and_maven_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mvn is present but cannot reach anything: it fails as an unreachable Maven Central does.
    _fake_tool(tmp_path, "mvn", "echo '[ERROR] Could not transfer artifact: Unknown host'; exit 1")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(runtime.LauncherError) as raised:
        runtime.fetch_runtime(tmp_path / "cache", say=lambda _: None)
    message = str(raised.value)
    assert "downloading Apache Kafka 4.1" in message
    assert "mvn exit 1" in message
    assert "Unknown host" in message
    # Nothing half-fetched is left to be mistaken for a complete cache next time.
    assert not list((tmp_path / "cache").glob("kafka-*/.complete"))
