"""``govesb worker`` as a child process, for the demo and the tests (what an operator runs)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deploy.kafka.launcher import REPO, LauncherError, die_with_parent, free_port

# The bus's demo keys, one per role: deliveries (worker, sink) and the HTTP gateway.
DEMO_BUS_KEY = REPO / "deploy" / "demo-keys" / "ega.key.pem"
DEMO_BUS_KEY_ID = "ega-d06f8e0a5d19"
DEMO_GATEWAY_KEY = REPO / "deploy" / "demo-keys" / "ega-gateway.key.pem"
DEMO_GATEWAY_KEY_ID = "ega-811cb62f3e2d"
# What a worker of the dev stack and the tests needs besides its key: the demo keys allowed,
# and the gateway's key id accepted on what the gateway publishes.
DEMO_WORKER_ENV = {
    "GOVESB_ALLOW_DEMO_KEYS": "true",
    "GOVESB_GATEWAY_KEY_IDS": DEMO_GATEWAY_KEY_ID,
}
# A gateway of the dev stack and the tests signs with its own key.
DEMO_GATEWAY_ENV = {
    "GOVESB_SIGNING_KEY_FILE": str(DEMO_GATEWAY_KEY),
    "GOVESB_SIGNING_KEY_ID": DEMO_GATEWAY_KEY_ID,
    "GOVESB_ALLOW_DEMO_KEYS": "true",
}


def client_secret(institution: str) -> str:
    """The gateway client secret of a demo institution (README, next to the demo keys)."""
    return f"demo-{institution}-client-secret"


def demo_clients(institutions: list[str]) -> dict[str, str]:
    """``GOVESB_CLIENTS__<ID>`` for every demo institution."""
    return {f"GOVESB_CLIENTS__{i.upper()}": client_secret(i) for i in institutions}


@dataclass
class WorkerProcess:
    """A running ``govesb worker`` and where it serves /health and /metrics."""

    process: subprocess.Popen[bytes]
    app_id: str
    web_port: int
    log_path: Path

    def _get(self, path: str) -> bytes:
        url = f"http://127.0.0.1:{self.web_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return bytes(response.read())

    def health(self) -> dict[str, Any] | None:
        """The /health body, or None while the worker does not answer."""
        try:
            return dict(json.loads(self._get("/health")))
        except (OSError, ValueError):
            return None

    def metrics(self) -> str:
        """The /metrics text."""
        return self._get("/metrics").decode()

    def kill(self) -> int:
        """SIGKILL (``kill -9``): no shutdown, no flush, no commit; return the exit code."""
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait(10)

    def stop(self, bound_s: float = 30.0) -> tuple[int, float]:
        """SIGTERM; return (exit code, seconds it took); killed if past ``bound_s``."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(bound_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode, time.monotonic() - started


def start_govesb(
    args: list[str],
    env: dict[str, str],
    log_path: Path,
    web_port: int,
    ready: Any,
    *,
    app_id: str = "",
    ready_timeout: float = 90.0,
) -> WorkerProcess:
    """Start ``govesb <args>`` with ``env`` added; return once ``ready(health body)`` holds."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("govesb")), *args],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    started = WorkerProcess(process, app_id, web_port, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LauncherError(
                f"govesb {args[0]} exited with {process.returncode}:\n"
                f"{log_path.read_text()[-3000:]}"
            )
        body = started.health()
        if body and ready(body):
            return started
        time.sleep(0.5)
    started.stop()
    raise LauncherError(f"govesb {args[0]} was not ready in {ready_timeout:.0f}s; see {log_path}")


def start_worker(
    bootstrap: str,
    registry_url: str,
    log_path: Path,
    *,
    app_id: str = "govesb-pipeline",
    extra_env: dict[str, str] | None = None,
    ready_timeout: float = 90.0,
    processes: int = 1,
) -> WorkerProcess:
    """Start a worker with the demo delivery key (demo keys allowed); return once it holds
    partitions. With ``processes`` > 1 it is ``govesb worker --processes N``, returned once
    its first process holds partitions (:func:`worker_processes` gives each process)."""
    port = free_ports(processes)  # process i serves port + i
    env = {
        "GOVESB_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "GOVESB_SCHEMA_REGISTRY__URL": registry_url,
        "GOVESB_APP_ID": app_id,
        "GOVESB_WEB_PORT": str(port),
        "GOVESB_SIGNING_KEY_FILE": str(DEMO_BUS_KEY),
        "GOVESB_SIGNING_KEY_ID": DEMO_BUS_KEY_ID,
        **DEMO_WORKER_ENV,
        **(extra_env or {}),
    }
    return start_govesb(
        [
            "worker",
            "--loglevel",
            "WARNING",
            *(["--processes", str(processes)] if processes > 1 else []),
        ],
        env,
        log_path,
        port,
        lambda body: body["status"] == "ok" and body["checks"]["partitions"]["assigned"],
        app_id=app_id,
        ready_timeout=ready_timeout,
    )


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports nothing listens on right now."""
    while True:
        first = free_port()
        if all(_bindable(first + i) for i in range(1, count)):
            return first


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def worker_processes(command: WorkerProcess, processes: int) -> list[WorkerProcess]:
    """Each process of a ``govesb worker --processes N`` command, as its own port shows it."""
    return [replace(command, web_port=command.web_port + i) for i in range(processes)]
