"""Session fixtures: the real Kafka broker and Apicurio registry, fresh topics and groups.

The broker and registry are started once per test session by ``deploy.kafka.launcher`` (or
reused from ``GOVESB_TEST_BOOTSTRAP`` / ``GOVESB_TEST_REGISTRY``). Without them an
integration test is skipped locally, but fails when ``CI=true``: CI never passes empty.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from deploy.kafka.launcher import LauncherError, LocalBus, metadata_ready, registry_ready
from deploy.worker import WorkerProcess
from deploy.worker import start_worker as start_worker_process
from streams.settings import REPO_ROOT

EXAMPLE_REGISTRY = REPO_ROOT / "deploy" / "registry.example.yaml"


class TestEnvironment(BaseSettings):
    """What the environment tells the test run."""

    __test__ = False  # not a test class, despite its name
    model_config = SettingsConfigDict(env_prefix="GOVESB_TEST_", frozen=True)

    bootstrap: str | None = None
    registry: str | None = None
    ci: bool = Field(default=False, validation_alias=AliasChoices("CI"))


@pytest.fixture(scope="session")
def test_environment() -> TestEnvironment:
    """Settings of this test run, read once."""
    return TestEnvironment()


def _unavailable(environment: TestEnvironment, why: str) -> None:
    if environment.ci:
        pytest.fail(f"CI=true and {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def local_bus(test_environment: TestEnvironment) -> Iterator[LocalBus | None]:
    """Broker + registry started for this session, or None when both are given from outside."""
    if test_environment.bootstrap and test_environment.registry:
        yield None
        return
    bus = LocalBus()
    try:
        bus.start()
    except LauncherError as error:
        _unavailable(test_environment, f"the local broker/registry could not start: {error}")
    try:
        yield bus
    finally:
        bus.stop()


@pytest.fixture(scope="session")
def kafka(test_environment: TestEnvironment, local_bus: LocalBus | None) -> str:
    """Bootstrap address (``host:port``) of a real Kafka broker."""
    bootstrap = local_bus.bootstrap if local_bus else str(test_environment.bootstrap)
    if not metadata_ready(bootstrap):
        _unavailable(test_environment, f"no Kafka broker answers at {bootstrap}")
    return bootstrap


@pytest.fixture(scope="session")
def registry(test_environment: TestEnvironment, local_bus: LocalBus | None) -> str:
    """URL of a real Confluent-compatible schema registry API (Apicurio's ``/apis/ccompat/v7``)."""
    url = local_bus.registry_url if local_bus else str(test_environment.registry).rstrip("/")
    if not registry_ready(url):
        _unavailable(test_environment, f"no schema registry answers at {url}")
    return url


TopicFactory = Callable[..., str]


@pytest.fixture
def topic_factory(kafka: str) -> Iterator[TopicFactory]:
    """Create fresh uuid-named topics on the real broker; they are deleted after the test."""
    admin = AdminClient({"bootstrap.servers": kafka})
    created: list[str] = []

    def make_topic(prefix: str = "test", partitions: int = 1) -> str:
        name = f"{prefix}.{uuid.uuid4().hex}"
        futures = admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=10)
        futures[name].result(timeout=15)
        created.append(name)
        return name

    yield make_topic
    if created:
        for future in admin.delete_topics(created, operation_timeout=10).values():
            future.result(timeout=15)


@pytest.fixture
def group_id() -> str:
    """A fresh consumer group id."""
    return f"test-group.{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def kcat(test_environment: TestEnvironment) -> str:
    """Path of Debian's ``kcat``, installed with apt-get when missing."""
    found = shutil.which("kcat")
    if found is None and shutil.which("apt-get") is not None:
        install = ["apt-get", "install", "-y", "-qq", "kcat"]
        if subprocess.run(install, capture_output=True, check=False).returncode != 0:
            # A fresh machine's package lists may be empty or stale: refresh once and retry.
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
            subprocess.run(install, capture_output=True, check=False)
        found = shutil.which("kcat")
    if found is None:
        _unavailable(test_environment, "kcat is not installed and apt-get could not install it")
    return str(found)


@pytest.fixture(scope="session")
def cli_options(kafka: str, registry: str) -> list[str]:
    """Top-level ``govesb`` options that point the CLI at the test broker and registry."""
    return ["--bootstrap", kafka, "--schema-registry", registry]


@pytest.fixture(scope="session")
def applied_registry(cli_options: list[str]) -> Path:
    """The example registry applied and the catalogue's schemas registered, once per session.

    Returns the path of the applied registry YAML.
    """
    from typer.testing import CliRunner

    from connectors.cli import app

    runner = CliRunner()
    registered = runner.invoke(app, [*cli_options, "schemas", "register"])
    assert registered.exit_code == 0, registered.output
    applied = runner.invoke(app, [*cli_options, "registry", "apply", str(EXAMPLE_REGISTRY)])
    assert applied.exit_code == 0, applied.output
    return EXAMPLE_REGISTRY


@pytest.fixture
def start_worker(
    kafka: str, registry: str, applied_registry: Path, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real ``govesb worker`` processes; each is ready (partitions assigned) on return."""
    workers: list[WorkerProcess] = []

    def start(app_id: str | None = None, env: dict[str, str] | None = None) -> WorkerProcess:
        try:
            worker = start_worker_process(
                kafka,
                registry,
                tmp_path / f"worker-{len(workers)}.log",
                app_id=app_id or f"test-pipeline-{uuid.uuid4().hex[:8]}",
                extra_env={"GOVESB_COMMIT_INTERVAL_S": "0.5", **(env or {})},
            )
        except LauncherError as error:
            pytest.fail(str(error))
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
