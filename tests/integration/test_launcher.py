"""The launcher as a user runs it: start, serve, keep data, stop, leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from deploy.kafka.launcher import REPO, LocalBus, die_with_parent, metadata_ready, registry_ready

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.slow]


def _jvms_using(directory: Path) -> list[int]:
    """PIDs of live processes whose command line mentions ``directory``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().split()[2]
        except OSError:
            continue
        if str(directory) in cmdline and "java" in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def _wait_gone(directory: Path, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _jvms_using(directory)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _start_launcher(data_dir: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "deploy.kafka.launcher", "up", "--data-dir", str(data_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=die_with_parent,  # an interrupted test run must not leave a launcher behind
    )
    assert process.stdout is not None
    addresses: dict[str, str] = {}
    for line in process.stdout:
        if "=" in line:
            name, value = line.strip().split("=", 1)
            addresses[name] = value
        if "GOVESB_TEST_REGISTRY" in addresses:
            break
    assert set(addresses) == {"GOVESB_TEST_BOOTSTRAP", "GOVESB_TEST_REGISTRY"}, addresses
    return process, addresses


def test_ctrl_c_stops_broker_and_registry_and_leaves_no_process(tmp_path: Path) -> None:
    process, addresses = _start_launcher(tmp_path)
    try:
        assert metadata_ready(addresses["GOVESB_TEST_BOOTSTRAP"])
        assert registry_ready(addresses["GOVESB_TEST_REGISTRY"])
        assert len(_jvms_using(tmp_path)) == 2
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        process.kill()
    assert _wait_gone(tmp_path, 5) == []
    assert not metadata_ready(addresses["GOVESB_TEST_BOOTSTRAP"])


def test_a_killed_launcher_takes_its_jvms_with_it(tmp_path: Path) -> None:
    process, _ = _start_launcher(tmp_path)
    assert len(_jvms_using(tmp_path)) == 2
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    assert _wait_gone(tmp_path, 45) == []


def test_a_restart_on_the_same_data_dir_keeps_records_schemas_and_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"test.restart.{uuid.uuid4().hex}"
    schema = {"type": "record", "name": "Kept", "namespace": "tz.go.test", "fields": []}
    monkeypatch.chdir(tmp_path)  # a relative data dir, as `make kafka` passes it
    with LocalBus(data_dir=Path("bus")) as bus:
        assert bus.broker is not None
        assert bus.registry is not None
        bootstrap, registry_url = bus.broker.bootstrap, bus.registry.url
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        producer.produce(topic, b"kept across restart", key=b"k")
        assert producer.flush(15) == 0
        request = urllib.request.Request(
            f"{registry_url}/subjects/tz.go.test.Kept/versions",
            data=json.dumps({"schema": json.dumps(schema)}).encode(),
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            schema_id = json.load(response)["id"]

    with LocalBus(data_dir=Path("bus")) as bus:
        assert bus.broker is not None
        assert bus.registry is not None
        assert (bus.broker.bootstrap, bus.registry.url) == (bootstrap, registry_url)
        with urllib.request.urlopen(f"{registry_url}/schemas/ids/{schema_id}", timeout=10) as r:
            assert json.loads(json.load(r)["schema"])["name"] == "Kept"
        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": topic, "auto.offset.reset": "earliest"}
        )
        consumer.subscribe([topic])
        try:
            message = consumer.poll(20)
            assert message is not None
            assert message.error() is None
            assert message.value() == b"kept across restart"
        finally:
            consumer.close()
