"""Apicurio Registry with KafkaSQL storage: the schemas live in the site's Kafka cluster.

Each site runs one. The primary's writes its journal (``kafkasql-journal``) into the primary
cluster; MirrorMaker 2 copies that topic to the DR cluster under the same name, and the DR
site's registry replays it, so it assigns the same ids to the same schemas — ids the records
carry in their first five bytes. (Registering the catalogue again at the DR site would not do:
the pipeline registers per-agreement delivery schemas as events arrive, in arrival order.)
See ``deploy/dr/README.md``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from deploy.kafka.launcher import (
    CCOMPAT_PATH,
    _JavaProcess,
    _wait_until,
    free_port,
    registry_ready,
)
from deploy.kafka.runtime import require_java

JOURNAL_TOPIC = "kafkasql-journal"


@dataclass
class JournalRegistry:
    """Apicurio (KafkaSQL storage) on loopback, its journal in the cluster at ``bootstrap``."""

    jar: Path
    bootstrap: str
    port: int | None = None
    log_dir: Path | None = None
    heap_mb: int = 384
    _proc: _JavaProcess | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        """Base URL of the Confluent-compatible API."""
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    def launch(self) -> None:
        """Start the JVM; :meth:`wait_ready` waits until it has replayed the journal."""
        java = require_java()
        self.port = self.port or free_port()
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="govesb-registry-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._proc = _JavaProcess("Apicurio registry (KafkaSQL)", self.log_dir / "registry.log")
        self._proc.launch(
            [java, f"-Xmx{self.heap_mb}m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             f"-Dquarkus.http.port={self.port}", "-Dquarkus.http.host=127.0.0.1",
             "-Dapicurio.storage.kind=kafkasql",
             f"-Dapicurio.kafkasql.bootstrap.servers={self.bootstrap}",
             f"-Dapicurio.kafkasql.topic={JOURNAL_TOPIC}",
             # Same schema in other whitespace = same version, as Confluent clients expect.
             "-Dapicurio.ccompat.use-canonical-hash=true",
             "-Dquarkus.log.level=WARN", "-Dquarkus.http.access-log.enabled=false",
             "-jar", str(self.jar)],
            cwd=self.jar.parent,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until the ccompat API answers (KafkaSQL answers only after replaying the journal)."""
        _wait_until(lambda: registry_ready(self.url), self._proc, timeout, "Apicurio (KafkaSQL)")

    def start(self, timeout: float = 180.0) -> None:
        """Launch and wait until it serves."""
        self.launch()
        self.wait_ready(timeout)

    @property
    def running(self) -> bool:
        """Whether the JVM is alive."""
        return self._proc is not None and self._proc.running

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, SIGKILL after ``timeout``."""
        if self._proc is not None:
            self._proc.stop(timeout)
