"""MirrorMaker 2 for the DR site: render ``mm2.properties`` and run it from the cached jars.

The jars are Kafka's own (``connect-mirror`` and its dependencies are in ``deploy/kafka/pom.xml``
and so in the cache's ``lib`` directory next to the broker's)::

    python -m deploy.dr.mirror render --primary 10.0.1.5:9092 --dr 10.8.1.5:9092 > mm2.properties
    python -m deploy.dr.mirror run --primary 127.0.0.1:9092 --dr 127.0.0.1:19092 --local

``run`` starts ``java -cp '<lib>/*' org.apache.kafka.connect.mirror.MirrorMaker mm2.properties``
with ``deploy/dr/log4j2.properties``, waits until it replicates (a heartbeat written into the
primary has arrived at the DR site) and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import string
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from deploy.kafka.launcher import _JavaProcess, _wait_until
from deploy.kafka.runtime import DEFAULT_CACHE, LauncherError, fetch_runtime, require_java, stderr

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "mm2.properties"
LOG4J_CONFIG = HERE / "log4j2.properties"
MAIN_CLASS = "org.apache.kafka.connect.mirror.MirrorMaker"
PRIMARY, DR = "primary", "dr"
# The bus's processes (worker app ids, HTTP sinks: govesb-*) and institutions' consumer groups
# (`<institution>.<anything>`). A list of regexes separated by commas, so none may hold one.
DEFAULT_GROUPS = (r"govesb-.*", r"[a-z][a-z0-9-]+\..+")


@dataclass(frozen=True)
class MirrorOptions:
    """What the template leaves open. The defaults are for production; :meth:`drill` for a
    local drill (one broker per site, second-scale intervals)."""

    primary_bootstrap: str
    dr_bootstrap: str
    groups: tuple[str, ...] = DEFAULT_GROUPS
    replication_factor: int = 3
    checkpoint_interval_s: int = 5
    offset_lag_max: int = 100
    offset_flush_interval_ms: int = 5000
    refresh_interval_s: int = 60
    tasks_max: int = 4

    def drill(self) -> MirrorOptions:
        """The same flow with replication factor 1, an offset sync per record and 1 s intervals."""
        return dataclasses.replace(
            self,
            replication_factor=1,
            checkpoint_interval_s=1,
            offset_lag_max=0,
            offset_flush_interval_ms=1000,
            refresh_interval_s=2,
            tasks_max=1,
        )


def _escape(value: str) -> str:
    """A value as a .properties file must spell it (a backslash escapes the next character)."""
    return value.replace("\\", "\\\\")


def render(options: MirrorOptions, template: Path = TEMPLATE) -> str:
    """``mm2.properties`` with every placeholder filled; ``ValueError`` if one is left over."""
    for regex in options.groups:
        if "," in regex:
            raise ValueError(f"group pattern {regex!r}: MirrorMaker splits the list on commas")
        re.compile(regex)
    values = {
        "primary_bootstrap": options.primary_bootstrap,
        "dr_bootstrap": options.dr_bootstrap,
        "groups": _escape(", ".join(options.groups)),
        "replication_factor": str(options.replication_factor),
        "checkpoint_interval_s": str(options.checkpoint_interval_s),
        "offset_lag_max": str(options.offset_lag_max),
        "offset_flush_interval_ms": str(options.offset_flush_interval_ms),
        "refresh_interval_s": str(options.refresh_interval_s),
        "tasks_max": str(options.tasks_max),
    }
    text = string.Template(template.read_text()).safe_substitute(values)
    left = sorted(set(re.findall(r"\$\{(\w+)\}", text)))
    if left:
        raise ValueError(f"{template} has placeholders nothing fills: {', '.join(left)}")
    return text


def parse_properties(text: str) -> dict[str, str]:
    """``key = value`` lines of a rendered file, backslash escapes undone (as Java reads them).

    Enough for what ``render`` writes (no line continuations); used to check the template.
    """
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        key, _, value = re.split(r"\s*([=:])\s*", line, maxsplit=1)
        found[key] = re.sub(r"\\(.)", r"\1", value)
    return found


def latest_heartbeat_ms(bootstrap: str, topic: str = f"{PRIMARY}.heartbeats") -> int | None:
    """Timestamp (ms) of the newest heartbeat in ``topic`` at ``bootstrap``; None if none yet."""
    from confluent_kafka import Consumer, TopicPartition  # project dependency

    from streams.dr.sites import parse_heartbeat

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "govesb-dr-probe",  # never commits: assign() and no offsets stored
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=3)
        partitions = metadata.topics.get(topic)
        if partitions is None or partitions.error is not None:
            return None
        newest: int | None = None
        for partition in partitions.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=3, cached=False
            )
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, high - 1)])
            message = consumer.poll(3)
            if message is None or message.error() is not None:
                continue
            heartbeat = parse_heartbeat(message.key() or b"", message.value() or b"")
            newest = max(newest or 0, heartbeat.timestamp_ms)
        return newest
    except Exception:  # a site that does not answer yet
        return None
    finally:
        consumer.close()


def topics_at(bootstrap: str) -> set[str]:
    """Topic names the cluster at ``bootstrap`` has (empty when it does not answer)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        return set(admin.list_topics(timeout=3).topics)
    except Exception:
        return set()


@dataclass
class MirrorMaker2:
    """One dedicated MirrorMaker 2 process (``primary -> dr``) and its log."""

    lib: Path
    options: MirrorOptions
    work_dir: Path | None = None
    heap_mb: int = 512
    _proc: _JavaProcess | None = field(default=None, init=False, repr=False)
    _started_ms: int = field(default=0, init=False, repr=False)

    @property
    def log_path(self) -> Path:
        """Where MirrorMaker logs (``<work_dir>/mm2.log``)."""
        if self.work_dir is None:
            raise LauncherError("MirrorMaker 2 is not launched")
        return self.work_dir / "mm2.log"

    def launch(self) -> None:
        """Write ``mm2.properties`` into the work dir and start the JVM."""
        java = require_java()
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="govesb-mm2-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        properties = self.work_dir / "mm2.properties"
        properties.write_text(render(self.options))
        self._started_ms = int(time.time() * 1000)
        self._proc = _JavaProcess("MirrorMaker 2", self.log_path)
        self._proc.launch(
            [java, f"-Xms{self.heap_mb // 2}m", f"-Xmx{self.heap_mb}m", "-XX:+UseG1GC",
             f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
             "-cp", f"{self.lib}/*", MAIN_CLASS, str(properties)],
            cwd=self.work_dir,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 180.0, topics: Iterable[str] = ()) -> None:
        """Until a heartbeat written into the primary after launch has reached the DR site,
        and ``topics`` exist there; else raise with the log's last lines."""
        wanted = set(topics)

        def replicating() -> bool:
            newest = latest_heartbeat_ms(self.options.dr_bootstrap)
            if newest is None or newest < self._started_ms:
                return False
            return wanted <= topics_at(self.options.dr_bootstrap)

        _wait_until(replicating, self._proc, timeout, "MirrorMaker 2 (primary -> dr)")

    def start(self, timeout: float = 180.0, topics: Iterable[str] = ()) -> None:
        """Launch and wait until records flow to the DR site."""
        self.launch()
        self.wait_ready(timeout, topics)

    @property
    def running(self) -> bool:
        """Whether the JVM is alive."""
        return self._proc is not None and self._proc.running

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (tasks commit their offsets), SIGKILL after ``timeout``."""
        if self._proc is not None:
            self._proc.stop(timeout)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``render`` or ``run``."""
    parser = argparse.ArgumentParser(prog="python -m deploy.dr.mirror", description=__doc__)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="download cache")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("render", "print mm2.properties"), ("run", "run MirrorMaker 2")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--primary", required=True, help="primary bootstrap host:port")
        command.add_argument("--dr", required=True, help="DR bootstrap host:port")
        command.add_argument(
            "--local",
            action="store_true",
            help="one broker per site: replication factor 1, 1 s intervals (a drill)",
        )
        command.add_argument("--work-dir", type=Path, help="properties and log (default: temp)")
    args = parser.parse_args(argv)
    options = MirrorOptions(args.primary, args.dr)
    if args.local:
        options = options.drill()
    if args.command == "render":
        print(render(options), end="")
        return 0
    try:
        runtime = fetch_runtime(args.cache)
        mirror = MirrorMaker2(runtime.kafka_lib, options, args.work_dir)
        try:
            mirror.start()
            print(f"MirrorMaker 2 replicating {args.primary} -> {args.dr}; log {mirror.log_path}")
            print("press Ctrl-C to stop", flush=True)
            while mirror.running:
                time.sleep(0.5)
            stderr("MirrorMaker 2 exited on its own")
            return 1
        finally:
            with contextlib.suppress(KeyboardInterrupt):
                mirror.stop()
    except LauncherError as error:
        stderr(f"error: {error}")
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
