"""A real Prometheus server for ``make demo``, scraping the processes the dev stack started.

Debian's ``prometheus`` package provides the binary (``make setup`` installs it). The scrape
configuration is written for this run: the same job names as ``deploy/prometheus/prometheus.yml``
(``govesb-worker``, ``govesb-sink``, ``govesb-gateway``) with loopback targets, and the same
alert rules, so what the dev stack shows is what production alerts on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploy.kafka.launcher import REPO, LauncherError, die_with_parent, free_port

RULES = REPO / "deploy" / "prometheus" / "alerts.yml"


def scrape_config(targets: dict[str, list[str]], interval_s: int = 2) -> dict[str, Any]:
    """A Prometheus configuration scraping ``targets`` (job name -> host:port list)."""
    return {
        "global": {
            "scrape_interval": f"{interval_s}s",
            "scrape_timeout": f"{max(1, interval_s - 1)}s",
            "evaluation_interval": f"{interval_s}s",
        },
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": hosts}]}
            for job, hosts in targets.items()
        ],
    }


@dataclass
class LocalPrometheus:
    """``prometheus`` on a free loopback port with its data under ``data_dir``."""

    data_dir: Path
    targets: dict[str, list[str]]
    port: int = field(default_factory=free_port)
    _process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 30.0) -> LocalPrometheus:
        """Start the server; return once it answers ``/-/ready``."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise LauncherError(
                "prometheus is not installed: run `make setup` (it installs Debian's "
                "prometheus package) or `apt-get install prometheus`"
            )
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)
        config = self.data_dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(self.targets), sort_keys=False))
        log = (self.data_dir / "prometheus.log").open("wb")
        self._process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = (self.data_dir / "prometheus.log").read_text()[-2000:]
                raise LauncherError(f"prometheus exited with {self._process.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise LauncherError(f"prometheus was not ready in {ready_timeout:.0f}s")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)

    def _api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"{self.url}/api/v1/{path}{query}"  # our own loopback server
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            body = json.load(response)
        if body.get("status") != "success":
            raise LauncherError(f"prometheus API {path}: {body}")
        return body["data"]

    def targets_health(self) -> dict[str, str]:
        """``job/instance`` -> ``up``/``down``/``unknown`` for every active target."""
        active = self._api("targets")["activeTargets"]
        return {f"{t['labels']['job']}/{t['labels']['instance']}": str(t["health"]) for t in active}

    def wait_all_up(self, timeout: float = 30.0) -> dict[str, str]:
        """Poll until every target is up (or the timeout); return the last health seen."""
        deadline = time.monotonic() + timeout
        health = self.targets_health()
        while time.monotonic() < deadline:
            health = self.targets_health()
            expected = sum(len(hosts) for hosts in self.targets.values())
            if len(health) == expected and all(h == "up" for h in health.values()):
                break
            time.sleep(0.5)
        return health

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant query: (labels, value) per series."""
        result = self._api("query", query=promql)["result"]
        return [(dict(series["metric"]), float(series["value"][1])) for series in result]
