"""Start GovESB's local Apache Kafka broker and Apicurio registry from Maven Central jars.

No Docker: the pinned jars (``deploy/kafka/pom.xml``, ``deploy/kafka/apicurio/pom.xml``) are
fetched once by Maven into a git-ignored cache and started with ``java``. Used by the test
fixtures, ``make kafka`` and ``make demo``::

    python -m deploy.kafka.launcher fetch          # download once, print what is cached
    python -m deploy.kafka.launcher up             # broker + registry until Ctrl-C
    python -m deploy.kafka.launcher up --data-dir .cache/data/dev --kafka-port 9092
    python -m deploy.kafka.launcher up --secure    # plus a SASL_SSL listener, ACLs enforced

Every process started here is stopped with SIGTERM, then killed after a bound, and on Linux
dies with the process that started it, so an interrupted test run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from deploy.kafka.runtime import (
    DEFAULT_CACHE,
    HERE,
    REPO,
    LauncherError,
    Say,
    fetch_runtime,
    require_java,
    stderr,
)
from deploy.kafka.tls import (
    SecureEndpoint,
    SecureListener,
    prepare_secure_listener,
    scram_credential,
    secure_listener_properties,
)

LOG4J_CONFIG = HERE / "log4j2.properties"
CCOMPAT_PATH = "/apis/ccompat/v7"
STOP_TIMEOUT_S = 30.0

__all__ = [
    "REPO",
    "ApicurioRegistry",
    "KafkaBroker",
    "LauncherError",
    "LocalBus",
    "SecureListener",
    "metadata_ready",
    "registry_ready",
]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel sends SIGTERM to the JVM if its parent dies (kill -9 of a
    # test run included), so no broker outlives the run that started it.
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join("    " + line[:300] for line in text[-lines:])


@dataclass
class _JavaProcess:
    """One JVM started by the launcher, with its log file and a bounded stop."""

    name: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def launch(self, argv: list[str], cwd: Path) -> None:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise LauncherError(
                f"{self.name} exited with code {self.process.returncode} before it was ready; "
                f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


def _wait_until(
    ready: Callable[[], bool], proc: _JavaProcess | None, timeout: float, what: str
) -> None:
    if proc is None:
        raise LauncherError(f"{what}: launch() it before waiting for it")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check_alive()
        if ready():
            return
        time.sleep(0.2)
    raise LauncherError(
        f"{what} was not ready within {timeout:.0f}s; last lines of {proc.log_path}:\n"
        f"{_tail(proc.log_path)}"
    )


def new_cluster_id() -> str:
    """A KRaft cluster id: URL-safe base64 of 16 random bytes, no padding, no leading '-'."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def broker_properties(
    data_dir: Path,
    port: int,
    controller_port: int,
    secure: SecureEndpoint | None = None,
) -> str:
    """server.properties of a single-node combined broker+controller on loopback.

    With ``secure``, a ``SASL_SSL`` listener (SCRAM-SHA-512) is added and the
    StandardAuthorizer enforces ACLs on it; the PLAINTEXT and CONTROLLER listeners stay for
    the broker's own traffic (their unauthenticated principal, ``User:ANONYMOUS``, is a super
    user, as the broker registering with its controller must be).
    """
    listeners = f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}"
    protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    if secure is not None:
        listeners += f",SASL_SSL://127.0.0.1:{secure.port}"
        protocols += ",SASL_SSL:SASL_SSL"
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
        "listeners": listeners,
        "advertised.listeners": listeners,
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": protocols,
        "log.dirs": str(data_dir / "log"),
        "num.partitions": "3",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        "log.retention.hours": "168",
    }
    if secure is not None:
        settings.update(secure_listener_properties(secure))
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def metadata_ready(bootstrap: str, config: dict[str, Any] | None = None) -> bool:
    """True when the broker answers a Metadata request listing itself.

    ``config``: more librdkafka settings, e.g. TLS and SASL for a secure listener.
    """
    from confluent_kafka.admin import AdminClient  # project dependency; imported lazily

    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "log_level": 0,
            "socket.timeout.ms": 2000,
            **(config or {}),
        }
    )
    try:
        metadata = admin.list_topics(timeout=2)
    except Exception:
        return False
    return bool(metadata.brokers)


@dataclass
class KafkaBroker:
    """A single-node KRaft Kafka broker on loopback.

    With a ``data_dir``, data and the chosen ports survive a restart; without one a temporary
    directory is used and removed on stop. With ``security``, a ``SASL_SSL`` listener with
    ACLs enforced is added (:class:`SecureListener`); the PLAINTEXT one stays as it is.
    """

    lib: Path
    data_dir: Path | None = None
    port: int | None = None
    controller_port: int | None = None
    heap_mb: int = 512
    security: SecureListener | None = None
    _proc: _JavaProcess | None = field(default=None, init=False, repr=False)
    _temporary: bool = field(default=False, init=False, repr=False)
    _secure: SecureEndpoint | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients (the PLAINTEXT listener)."""
        return f"127.0.0.1:{self.port}"

    @property
    def secure(self) -> SecureEndpoint:
        """The ``SASL_SSL`` listener: address, CA, super user, client settings, user creation."""
        if self._secure is None:
            raise LauncherError(
                "this broker has no secure listener: KafkaBroker(security=SecureListener()) "
                "and launch() it first"
            )
        return self._secure

    @property
    def secure_bootstrap(self) -> str:
        """``host:port`` of the ``SASL_SSL`` listener."""
        return self.secure.bootstrap

    def launch(self) -> None:
        """Format storage if needed and start the JVM; :meth:`wait_ready` waits for it."""
        java = require_java()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="govesb-kafka-"))
            self._temporary = True
        self.data_dir = self.data_dir.resolve()  # the JVM runs with the data dir as its cwd
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state_file = self.data_dir / "launcher.json"
        saved = json.loads(state_file.read_text()) if state_file.exists() else {}
        self.port = self.port or saved.get("port") or free_port()
        self.controller_port = self.controller_port or saved.get("controller_port") or free_port()
        state = {"port": self.port, "controller_port": self.controller_port}
        if self.security is not None:
            state["sasl_port"] = self.security.port or saved.get("sasl_port") or free_port()
            try:
                self._secure = prepare_secure_listener(
                    self.data_dir / "tls", self.security, state["sasl_port"]
                )
            except ValueError as error:
                raise LauncherError(str(error)) from None
        for taken in state.values():
            if _port_is_open(taken):
                raise LauncherError(f"port {taken} on 127.0.0.1 is already in use")
        state_file.write_text(json.dumps(state))
        properties = self.data_dir / "server.properties"
        properties.write_text(
            broker_properties(self.data_dir, self.port, self.controller_port, self._secure)
        )

        classpath = f"{self.lib}/*"
        if not (self.data_dir / "log" / "meta.properties").exists():
            scram = (
                ["--add-scram", scram_credential(*self._secure.admin_credentials)]
                if self._secure is not None
                else []
            )
            formatted = subprocess.run(
                [java, "-Xmx256m", "-cp", classpath, "kafka.tools.StorageTool", "format",
                 "--standalone", "-t", new_cluster_id(), "-c", str(properties), *scram],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if formatted.returncode != 0:
                raise LauncherError(f"formatting Kafka storage failed:\n{formatted.stderr}")
        self._proc = _JavaProcess("Kafka broker", self.data_dir / "broker.log")
        self._proc.launch(
            [java, f"-Xms{self.heap_mb}m", f"-Xmx{self.heap_mb}m", "-XX:+UseG1GC",
             f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
             f"-Dkafka.logs.dir={self.data_dir}",
             "-cp", classpath, "kafka.Kafka", str(properties)],
            cwd=self.data_dir,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until a Metadata request succeeds, or raise with the log's last lines."""
        _wait_until(lambda: _port_is_open(self.port or 0), self._proc, timeout, "Kafka port")
        _wait_until(lambda: metadata_ready(self.bootstrap), self._proc, timeout, "Kafka broker")
        if self._secure is not None:  # TLS and the admin's SCRAM login work too
            secure = self._secure
            admin = secure.client_config(*secure.admin_credentials)
            _wait_until(
                lambda: metadata_ready(secure.bootstrap, admin),
                self._proc,
                timeout,
                "Kafka SASL_SSL listener",
            )

    def start(self, timeout: float = 90.0) -> None:
        """Launch and wait until the broker serves."""
        self.launch()
        self.wait_ready(timeout)

    @property
    def running(self) -> bool:
        """Whether the JVM is alive."""
        return self._proc is not None and self._proc.running

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (the benchmarks sample its CPU)."""
        process = self._proc.process if self._proc is not None else None
        return process.pid if process is not None else None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop cleanly (SIGTERM), kill after ``timeout``; keeps a given data dir."""
        if self._proc is not None:
            self._proc.stop(timeout)
        if self._temporary and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
            self._temporary = False


def registry_ready(url: str) -> bool:
    """True when ``GET <url>/subjects`` answers 200."""
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class ApicurioRegistry:
    """Apicurio Registry serving its Confluent-compatible API on loopback.

    With a ``data_dir`` schemas are kept in an H2 file there; otherwise in memory.
    """

    jar: Path
    data_dir: Path | None = None
    port: int | None = None
    heap_mb: int = 384
    _proc: _JavaProcess | None = field(default=None, init=False, repr=False)
    _log_dir: Path | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        """Base URL of the Confluent-compatible API (what clients are given)."""
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    def launch(self) -> None:
        """Start the JVM; :meth:`wait_ready` waits for it."""
        java = require_java()
        if self.data_dir is not None:
            self.data_dir = self.data_dir.resolve()
            self.data_dir.mkdir(parents=True, exist_ok=True)
            state_file = self.data_dir / "launcher.json"
            saved = json.loads(state_file.read_text()) if state_file.exists() else {}
            self.port = self.port or saved.get("port")
            self._log_dir = self.data_dir
            storage = f"jdbc:h2:file:{self.data_dir / 'registry'}"
        else:
            self._log_dir = Path(tempfile.mkdtemp(prefix="govesb-registry-"))
            storage = f"jdbc:h2:mem:govesb_{uuid.uuid4().hex}"
        self.port = self.port or free_port()
        if _port_is_open(self.port):
            raise LauncherError(f"port {self.port} on 127.0.0.1 is already in use")
        if self.data_dir is not None:
            (self.data_dir / "launcher.json").write_text(json.dumps({"port": self.port}))
        self._proc = _JavaProcess("Apicurio registry", self._log_dir / "registry.log")
        self._proc.launch(
            [java, f"-Xmx{self.heap_mb}m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             f"-Dquarkus.http.port={self.port}", "-Dquarkus.http.host=127.0.0.1",
             f"-Dapicurio.datasource.url={storage}",
             # Same schema in other whitespace = same version, as Confluent clients expect.
             "-Dapicurio.ccompat.use-canonical-hash=true",
             "-Dquarkus.log.level=WARN", "-Dquarkus.http.access-log.enabled=false",
             "-jar", str(self.jar)],
            cwd=self.jar.parent,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the ccompat API answers, or raise with the log's last lines."""
        _wait_until(lambda: registry_ready(self.url), self._proc, timeout, "Apicurio registry")

    def start(self, timeout: float = 120.0) -> None:
        """Launch and wait until the registry serves."""
        self.launch()
        self.wait_ready(timeout)

    @property
    def running(self) -> bool:
        """Whether the JVM is alive."""
        return self._proc is not None and self._proc.running

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop cleanly (SIGTERM), kill after ``timeout``."""
        if self._proc is not None:
            self._proc.stop(timeout)
        if self.data_dir is None and self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)


@dataclass
class LocalBus:
    """Broker and registry together, started in parallel; a context manager.

    ``data_dir`` keeps both under ``<data_dir>/kafka`` and ``<data_dir>/registry``.
    ``security`` gives the broker a ``SASL_SSL`` listener with ACLs enforced
    (:class:`SecureListener`); the registry stays plain HTTP.
    """

    data_dir: Path | None = None
    kafka_port: int | None = None
    registry_port: int | None = None
    cache: Path = DEFAULT_CACHE
    say: Say = stderr
    security: SecureListener | None = None
    broker: KafkaBroker | None = field(default=None, init=False)
    registry: ApicurioRegistry | None = field(default=None, init=False)

    def start(self) -> LocalBus:
        """Fetch (once), start both, wait until both serve; on any failure stop both."""
        runtime = fetch_runtime(self.cache, self.say)
        broker = self.broker = KafkaBroker(
            runtime.kafka_lib,
            self.data_dir / "kafka" if self.data_dir else None,
            port=self.kafka_port,
            security=self.security,
        )
        registry = self.registry = ApicurioRegistry(
            runtime.apicurio_jar,
            self.data_dir / "registry" if self.data_dir else None,
            port=self.registry_port,
        )
        started = time.monotonic()
        try:
            broker.launch()
            registry.launch()
            errors: list[BaseException] = []

            def wait_registry() -> None:
                try:
                    registry.wait_ready()
                except BaseException as exc:
                    errors.append(exc)

            waiter = threading.Thread(target=wait_registry, daemon=True)
            waiter.start()
            broker.wait_ready()
            waiter.join()
            if errors:
                raise errors[0]
        except BaseException:
            self.stop()
            raise
        secure = f" (SASL_SSL at {broker.secure_bootstrap})" if self.security else ""
        self.say(
            f"Kafka {runtime.kafka_version} at {broker.bootstrap}{secure}, Apicurio "
            f"{runtime.apicurio_version} at {registry.url} "
            f"(ready in {time.monotonic() - started:.1f}s)"
        )
        return self

    @property
    def bootstrap(self) -> str:
        """The broker's ``host:port``."""
        if self.broker is None:
            raise LauncherError("the local bus is not started")
        return self.broker.bootstrap

    @property
    def secure_bootstrap(self) -> str:
        """The broker's ``SASL_SSL`` ``host:port`` (with ``security`` only)."""
        if self.broker is None:
            raise LauncherError("the local bus is not started")
        return self.broker.secure_bootstrap

    @property
    def registry_url(self) -> str:
        """The registry's Confluent-compatible API URL."""
        if self.registry is None:
            raise LauncherError("the local bus is not started")
        return self.registry.url

    @property
    def running(self) -> bool:
        """Whether both processes are alive."""
        return all(part is not None and part.running for part in (self.broker, self.registry))

    def stop(self) -> None:
        """Stop the registry, then the broker; each with its bound."""
        for part in (self.registry, self.broker):
            if part is not None:
                part.stop()

    def __enter__(self) -> LocalBus:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM both end ``up`` through KeyboardInterrupt, so the bus is stopped.

    SIGINT is set explicitly: a process started in the background by a shell inherits it
    ignored, and Ctrl-C / ``kill -INT`` must still stop the bus then.
    """

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``fetch`` or ``up``."""
    parser = argparse.ArgumentParser(prog="python -m deploy.kafka.launcher", description=__doc__)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="download cache")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="download the pinned runtimes once and print their paths")
    up = commands.add_parser("up", help="run broker + registry in the foreground until Ctrl-C")
    up.add_argument("--data-dir", type=Path, help="keep data here across restarts (default: temp)")
    up.add_argument("--kafka-port", type=int, help="broker port (default: free or saved port)")
    up.add_argument("--registry-port", type=int, help="registry port (default: free or saved)")
    up.add_argument(
        "--secure",
        action="store_true",
        help="add a SASL_SSL (SCRAM-SHA-512) listener with ACLs enforced; prints how to log in",
    )
    args = parser.parse_args(argv)

    try:
        if args.command == "fetch":
            runtime = fetch_runtime(args.cache)
            print(f"kafka {runtime.kafka_version}: {runtime.kafka_lib}")
            print(f"apicurio {runtime.apicurio_version}: {runtime.apicurio_jar}")
            return 0
        bus = LocalBus(
            args.data_dir,
            args.kafka_port,
            args.registry_port,
            args.cache,
            security=SecureListener() if args.secure else None,
        )
        with _stop_signals_interrupt(), bus:
            print(f"GOVESB_TEST_BOOTSTRAP={bus.bootstrap}", flush=True)
            print(f"GOVESB_TEST_REGISTRY={bus.registry_url}", flush=True)
            if bus.broker is not None and args.secure:
                secure = bus.broker.secure
                env = secure.client_env(secure.admin_user, f"$(cat {secure.password_file})")
                print("the super user, over TLS:", flush=True)
                for name, value in env.items():
                    print(f"  {name}={value}", flush=True)
            print("press Ctrl-C to stop", flush=True)
            while bus.running:
                time.sleep(0.5)
            stderr("a process exited on its own; stopping the other")
            return 1
    except LauncherError as error:
        stderr(f"error: {error}")
        return 2
    except KeyboardInterrupt:
        stderr("stopped")
        return 0


if __name__ == "__main__":
    sys.exit(main())
