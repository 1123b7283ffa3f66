"""The DR drill's harness: two local sites, MirrorMaker 2 between them, and a supervisor.

A :class:`Site` is one Kafka broker and one Apicurio registry keeping its schemas in that
broker (KafkaSQL). :class:`BusSupervisor` runs the bus's processes — pipeline worker, HTTP
sink, gateway — against the site named in the active-site file (``govesb dr failover``
writes it) and, when the file names another site, stops MirrorMaker 2 and starts them again
there: what a service manager does when its configuration changes. Used by
``tests/integration/test_dr_drill.py``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.dr.mirror import MirrorMaker2
from deploy.dr.registry import JournalRegistry
from deploy.kafka.launcher import KafkaBroker, LauncherError, free_port
from deploy.kafka.runtime import Runtime
from deploy.worker import (
    DEMO_BUS_KEY,
    DEMO_BUS_KEY_ID,
    DEMO_GATEWAY_ENV,
    WorkerProcess,
    start_govesb,
    start_worker,
)
from streams.dr.sites import ActiveSite, read_active_site


def _kill(part: Any) -> None:
    """SIGKILL a launcher-started JVM: a site lost, not shut down (no clean stop, no flush)."""
    process = getattr(getattr(part, "_proc", None), "process", None)
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait(10)


@dataclass
class Site:
    """One site: a broker and an Apicurio registry whose journal is in that broker."""

    name: str
    runtime: Runtime
    data_dir: Path
    broker: KafkaBroker | None = None
    registry: JournalRegistry | None = None

    def start(self) -> Site:
        """Start the broker, then the registry (it needs the broker)."""
        self.broker = KafkaBroker(self.runtime.kafka_lib, self.data_dir / "kafka")
        self.broker.start()
        self.registry = JournalRegistry(
            self.runtime.apicurio_jar, self.broker.bootstrap, log_dir=self.data_dir / "registry"
        )
        self.registry.start()
        return self

    @property
    def bootstrap(self) -> str:
        """The broker's ``host:port``."""
        if self.broker is None:
            raise LauncherError(f"site {self.name} is not started")
        return self.broker.bootstrap

    @property
    def registry_url(self) -> str:
        """The registry's Confluent-compatible API URL."""
        if self.registry is None:
            raise LauncherError(f"site {self.name} is not started")
        return self.registry.url

    def kill(self) -> None:
        """Lose the site: SIGKILL the registry and the broker."""
        for part in (self.registry, self.broker):
            _kill(part)

    def stop(self) -> None:
        """Stop what still runs and remove the data."""
        for part in (self.registry, self.broker):
            if part is not None:
                part.stop()


@dataclass(frozen=True)
class BusConfig:
    """What the bus's processes need besides the site: the sink's subscriber and secrets."""

    subscriber: str
    sink_secrets: dict[str, str]
    gateway_clients: dict[str, str]
    worker_app_id: str = "govesb-pipeline"
    gateway_port: int = field(default_factory=free_port)
    log_dir: Path = Path()


@dataclass
class Switch:
    """One start of the bus's processes at a site, timed."""

    site: str
    noticed: float  # time.time() when the supervisor saw the active-site file change
    ready: float | None = None  # when every process was ready
    error: str | None = None


class BusSupervisor:
    """Runs worker, sink and gateway against the active site; follows the active-site file."""

    def __init__(
        self,
        config: BusConfig,
        state_file: Path,
        initial: ActiveSite,
        *,
        mirror: MirrorMaker2 | None = None,
        poll_s: float = 0.2,
    ) -> None:
        self.config = config
        self.state_file = state_file
        self.active = initial
        self.mirror = mirror
        self.poll_s = poll_s
        self.processes: dict[str, WorkerProcess] = {}
        self.switches: list[Switch] = []
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._lock = threading.Lock()
        # The processes are started from these threads, which live as long as the supervisor:
        # a child gets PR_SET_PDEATHSIG (die_with_parent), which fires when the *thread* that
        # started it exits, so a pool per switch would SIGTERM them as soon as it closed.
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="dr-supervisor")

    # ----------------------------------------------------------------- processes

    def _env(self, site: ActiveSite) -> dict[str, str]:
        env = {
            "GOVESB_KAFKA__BOOTSTRAP_SERVERS": site.bootstrap_servers,
            "GOVESB_SIGNING_KEY_FILE": str(DEMO_BUS_KEY),
            "GOVESB_SIGNING_KEY_ID": DEMO_BUS_KEY_ID,
        }
        if site.schema_registry_url:
            env["GOVESB_SCHEMA_REGISTRY__URL"] = site.schema_registry_url
        return env

    def _starters(self, site: ActiveSite) -> dict[str, Callable[[], WorkerProcess]]:
        config, env, logs = self.config, self._env(site), self.config.log_dir
        tag = f"{site.site}-{len(self.switches)}"

        def worker() -> WorkerProcess:
            return start_worker(
                site.bootstrap_servers,
                site.schema_registry_url or "",
                logs / f"worker-{tag}.log",
                app_id=config.worker_app_id,
                extra_env={**env, "GOVESB_COMMIT_INTERVAL_S": "0.5"},
            )

        def sink() -> WorkerProcess:
            port = free_port()
            secrets = {f"GOVESB_SECRETS__{k.upper()}": v for k, v in config.sink_secrets.items()}
            arguments = ["connect", "http-sink", "--subscriber", config.subscriber]
            return start_govesb(
                [*arguments, "--web-port", str(port)],
                {**env, **secrets, "GOVESB_BACKOFF_MAX_S": "1"},
                logs / f"sink-{tag}.log",
                port,
                lambda body: body["checks"]["consumer"]["partitions"] > 0,
            )

        def gateway() -> WorkerProcess:
            port = config.gateway_port
            clients = {f"GOVESB_CLIENTS__{k.upper()}": v for k, v in config.gateway_clients.items()}
            return start_govesb(
                ["connect", "gateway", "--web-port", str(port)],
                {**env, **DEMO_GATEWAY_ENV, **clients},
                logs / f"gateway-{tag}.log",
                port,
                lambda body: body["status"] == "ok",
            )

        return {"worker": worker, "sink": sink, "gateway": gateway}

    def start(self) -> None:
        """Start the processes at the initial site (in parallel), then watch the file."""
        self._switch_to(self.active)
        if self.switches[-1].error:
            raise LauncherError(self.switches[-1].error)
        self._watcher = threading.Thread(target=self._watch, name="dr-supervisor", daemon=True)
        self._watcher.start()

    def _switch_to(self, site: ActiveSite) -> None:
        switch = Switch(site.site, time.time())
        self.switches.append(switch)
        starters = self._starters(site)
        if self.mirror is not None and site.site != "primary":
            # Fencing: a primary that comes back must not replicate into the site in use.
            threading.Thread(target=self.mirror.stop, args=(10.0,), daemon=True).start()
        futures = {name: self._pool.submit(start) for name, start in starters.items()}
        for name, future in futures.items():
            try:
                self.processes[name] = future.result()
            except LauncherError as error:
                switch.error = f"{name} at {site.site}: {error}"
        if switch.error is None:
            switch.ready = time.time()
        self.active = site

    def _watch(self) -> None:
        while not self._stopping.wait(self.poll_s):
            with contextlib.suppress(ValueError, TypeError, OSError):  # unreadable: next poll
                wanted = read_active_site(self.state_file)
                if wanted is not None and wanted != self.active:
                    with self._lock:
                        self.kill()  # whatever still runs talks to the site left behind
                        self._switch_to(wanted)

    def kill(self) -> None:
        """SIGKILL every process (a site lost takes its processes with it)."""
        for process in self.processes.values():
            if process.process.poll() is None:
                process.process.kill()
                process.process.wait(10)
        self.processes.clear()

    def wait_switch(self, count: int, timeout: float) -> Switch:
        """Block until the ``count``-th start has finished (ready or failed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.switches) >= count:
                switch = self.switches[count - 1]
                if switch.ready is not None or switch.error is not None:
                    return switch
            time.sleep(0.1)
        raise LauncherError(f"the bus's processes did not restart within {timeout:.0f}s")

    def stop(self) -> None:
        """Stop watching and stop every process (SIGTERM, bounded)."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(30)
        with self._lock:
            for process in self.processes.values():
                process.stop()
            self.processes.clear()
        self._pool.shutdown(wait=True)
