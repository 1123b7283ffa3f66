"""Disaster Recovery: how far the DR site trails the primary, and the switch to it.

MirrorMaker 2 (``deploy/dr/``) copies the bus's topics, the schema registry's journal and the
consumer groups' offsets from the primary cluster to the DR cluster, keeping topic names
(IdentityReplicationPolicy). What it leaves at the DR site is read here:

- ``primary.heartbeats``: MirrorMaker writes a heartbeat into the primary every second and
  replicates it; the newest one's age is the replication delay, and its time is how far the
  DR copy is known to be complete when the primary is gone.
- ``primary.checkpoints.internal``: per consumer group and partition, the group's offset at
  the primary and the translated offset at the DR site (also committed into the DR cluster's
  group while the group has no member there).

``govesb dr status`` compares log-end offsets at both sites; ``govesb dr failover`` checks the
DR site, reports what did not make it, and records the switch (the active-site file) that
operators and supervisors act on. This module holds the settings and the pure part (parsers,
lag, offset translation state, the decision, the active-site file); ``streams.dr.status``
reads the sites.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.settings import KafkaSettings, SchemaRegistrySettings

Partition = tuple[str, int]
PRIMARY_ALIAS = "primary"


# --------------------------------------------------------------------------- settings


class DrSiteSettings(BaseModel):
    """How to reach one site; unset parts of the primary are the CLI's own connection."""

    model_config = ConfigDict(frozen=True)

    kafka: KafkaSettings | None = Field(
        default=None, description="the site's Kafka cluster (primary: `GOVESB_KAFKA__…`)"
    )
    schema_registry: SchemaRegistrySettings | None = Field(
        default=None,
        description="the site's schema registry (primary: `GOVESB_SCHEMA_REGISTRY__…`); "
        "compared by `govesb dr status`, handed to processes by `govesb dr failover`",
    )


class DrSettings(BaseModel):
    """The two sites and what ``govesb dr`` tolerates."""

    model_config = ConfigDict(frozen=True)

    primary: DrSiteSettings = DrSiteSettings()
    dr: DrSiteSettings = DrSiteSettings()
    primary_alias: str = Field(
        default=PRIMARY_ALIAS,
        description="MirrorMaker's name of the primary cluster (prefix of `<alias>.heartbeats` "
        "and `<alias>.checkpoints.internal` at the DR site)",
    )
    topics: str = Field(
        default=r"esb\..*|kafkasql-journal",
        description="regex of the replicated topics whose lag is reported",
    )
    groups: str = Field(
        default=r"govesb-.*|[a-z][a-z0-9-]+\..+",
        description="regex of the consumer groups whose offset translation is reported",
    )
    state_file: Path | None = Field(
        default=None,
        description="the active-site file `govesb dr failover` writes (JSON: site, bootstrap, "
        "registry); supervisors restart the bus's processes when it changes",
    )
    max_heartbeat_age_s: float = Field(
        default=30.0, description="an older newest heartbeat at the DR site is a problem"
    )
    catch_up_timeout_s: float = Field(
        default=60.0,
        description="how long a failover waits for the DR site to catch up while the primary "
        "still answers (a planned switchover)",
    )
    resend_margin_s: float = Field(
        default=10.0,
        description="after an unplanned failover publishers re-send what they published since "
        "the newest replicated heartbeat minus this many seconds (same event ids)",
    )
    timeout_s: float = Field(default=10.0, description="bound of each site's answers")


class DrCliSettings(BaseSettings):
    """Settings of ``govesb dr``: ``GOVESB_DR__DR__KAFKA__BOOTSTRAP_SERVERS=…`` and so on."""

    model_config = SettingsConfigDict(
        env_prefix="GOVESB_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    dr: DrSettings = DrSettings()


@dataclass(frozen=True)
class DrSites:
    """Where both sites are, for one ``govesb dr`` command."""

    settings: DrSettings
    primary: KafkaSettings
    dr: KafkaSettings
    primary_registry: SchemaRegistrySettings | None
    dr_registry: SchemaRegistrySettings | None


def resolve_sites(
    settings: DrSettings,
    cli_kafka: KafkaSettings,
    cli_registry: SchemaRegistrySettings,
    *,
    primary: str | None = None,
    dr: str | None = None,
    dr_registry: str | None = None,
) -> DrSites:
    """The sites from ``GOVESB_DR__…``, the CLI's own connection (the primary by default) and
    the command's options (which win); ``LookupError`` when the DR cluster is not given."""
    primary_kafka = settings.primary.kafka or cli_kafka
    if primary:
        primary_kafka = primary_kafka.model_copy(update={"bootstrap_servers": primary})
    dr_kafka = settings.dr.kafka
    if dr:
        dr_kafka = (dr_kafka or KafkaSettings()).model_copy(update={"bootstrap_servers": dr})
    if dr_kafka is None:
        raise LookupError(
            "where is the DR cluster? set GOVESB_DR__DR__KAFKA__BOOTSTRAP_SERVERS or pass --dr"
        )
    dr_schema_registry = settings.dr.schema_registry
    if dr_registry:
        dr_schema_registry = (dr_schema_registry or SchemaRegistrySettings()).model_copy(
            update={"url": dr_registry}
        )
    return DrSites(
        settings,
        primary_kafka,
        dr_kafka,
        settings.primary.schema_registry or cli_registry,
        dr_schema_registry,
    )


# --------------------------------------------------------------------------- MM2 records


class _Reader:
    """Kafka protocol types, as MirrorMaker's ``Struct`` schemas write them (big-endian)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def _take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return int(value)

    def int16(self) -> int:
        return self._take(">h")

    def int32(self) -> int:
        return self._take(">i")

    def int64(self) -> int:
        return self._take(">q")

    def string(self) -> str:
        size = self.int16()
        if size < 0 or self.at + size > len(self.data):
            raise ValueError("string past the end of the record")
        text = self.data[self.at : self.at + size].decode()
        self.at += size
        return text


@dataclass(frozen=True)
class Heartbeat:
    """A MirrorMaker heartbeat: written by ``source``'s MM2 into ``target`` at ``timestamp_ms``."""

    source: str
    target: str
    timestamp_ms: int


@dataclass(frozen=True)
class Checkpoint:
    """A group's offset at the primary and its translation at the DR site."""

    group: str
    topic: str
    partition: int
    upstream_offset: int
    downstream_offset: int
    timestamp_ms: int = 0  # of the checkpoint record: when MirrorMaker translated it


def parse_heartbeat(key: bytes, value: bytes) -> Heartbeat:
    """A record of a ``heartbeats`` topic; ``ValueError`` if it is not one."""
    try:
        keys, values = _Reader(key), _Reader(value)
        source, target = keys.string(), keys.string()
        if values.int16() != 0:
            raise ValueError("unknown heartbeat version")
        return Heartbeat(source, target, values.int64())
    except (struct.error, ValueError) as error:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"not a MirrorMaker heartbeat: {error}") from None


def parse_checkpoint(key: bytes, value: bytes, timestamp_ms: int = 0) -> Checkpoint:
    """A record of a ``<alias>.checkpoints.internal`` topic; ``ValueError`` if it is not one."""
    try:
        keys, values = _Reader(key), _Reader(value)
        group, topic, partition = keys.string(), keys.string(), keys.int32()
        if values.int16() != 0:
            raise ValueError("unknown checkpoint version")
        upstream, downstream = values.int64(), values.int64()
        return Checkpoint(group, topic, partition, upstream, downstream, timestamp_ms)
    except (struct.error, ValueError) as error:
        raise ValueError(f"not a MirrorMaker checkpoint: {error}") from None


def latest_checkpoints(checkpoints: Iterable[Checkpoint]) -> dict[tuple[str, str, int], Checkpoint]:
    """The last checkpoint per (group, topic, partition), in the order given (log order)."""
    return {(c.group, c.topic, c.partition): c for c in checkpoints}


# --------------------------------------------------------------------------- lag


@dataclass(frozen=True)
class PartitionLag:
    """Log-end offsets of one topic-partition at both sites (None: not there / not read).

    Offsets line up because MirrorMaker copied each topic from its first record into an empty
    DR topic and the bus writes no transactions (whose markers MirrorMaker does not copy).
    """

    topic: str
    partition: int
    primary_end: int | None
    dr_end: int | None

    @property
    def lag(self) -> int | None:
        """Records at the primary not yet at the DR site; None when the primary is not read."""
        if self.primary_end is None:
            return None
        return max(0, self.primary_end - (self.dr_end or 0))


def replication_lag(
    primary_ends: Mapping[Partition, int] | None, dr_ends: Mapping[Partition, int]
) -> list[PartitionLag]:
    """Every partition known at either site, sorted; a partition missing at the DR site lags
    by everything the primary has."""
    keys = sorted(set(primary_ends or {}) | set(dr_ends))
    return [
        PartitionLag(
            topic,
            partition,
            None if primary_ends is None else primary_ends.get((topic, partition), 0),
            dr_ends.get((topic, partition)),
        )
        for topic, partition in keys
    ]


@dataclass(frozen=True)
class GroupState:
    """How far one consumer group's offsets are translated to the DR site."""

    group: str
    checkpointed: int  # partitions with a checkpoint
    newest_checkpoint_ms: int | None
    behind: int | None  # records the checkpoints trail the group at the primary (None: unread)
    unchecked: int  # partitions past offset 0 at the primary with no checkpoint yet
    synced: int  # checkpointed partitions whose DR group offset reached the checkpoint


def group_states(
    checkpoints: Mapping[tuple[str, str, int], Checkpoint],
    primary_committed: Mapping[str, Mapping[Partition, int]] | None,
    dr_committed: Mapping[str, Mapping[Partition, int]],
) -> list[GroupState]:
    """Per group: checkpoints, how far they trail the primary, and whether MM2 synced them."""
    groups = {group for group, _, _ in checkpoints} | set(primary_committed or {})
    states = []
    for group in sorted(groups):
        mine = {(t, p): c for (g, t, p), c in checkpoints.items() if g == group}
        at_primary = None if primary_committed is None else primary_committed.get(group, {})
        at_dr = dr_committed.get(group, {})
        behind = None
        if at_primary is not None:
            behind = sum(
                max(0, offset - mine[tp].upstream_offset)
                for tp, offset in at_primary.items()
                if tp in mine
            )
        states.append(
            GroupState(
                group=group,
                checkpointed=len(mine),
                newest_checkpoint_ms=max((c.timestamp_ms for c in mine.values()), default=None),
                behind=behind,
                unchecked=0
                if at_primary is None
                else sum(1 for tp, offset in at_primary.items() if offset > 0 and tp not in mine),
                synced=sum(1 for tp, c in mine.items() if at_dr.get(tp, -1) >= c.downstream_offset),
            )
        )
    return states


@dataclass(frozen=True)
class RegistryComparison:
    """Schema versions and ids at the DR registry against the primary's."""

    dr_versions: int
    primary_versions: int | None  # None: the primary registry was not read
    missing: tuple[str, ...] = ()  # at the primary, not at the DR site
    different: tuple[str, ...] = ()  # same subject and version, another id


def compare_registries(
    primary: Mapping[tuple[str, int], int] | None, dr: Mapping[tuple[str, int], int]
) -> RegistryComparison:
    """Every (subject, version) of the primary must have the same id at the DR site: records
    carry the id, so a DR registry that numbers differently decodes them wrongly."""
    if primary is None:
        return RegistryComparison(len(dr), None)
    missing = tuple(
        f"{s} v{v} (id {i})" for (s, v), i in sorted(primary.items()) if (s, v) not in dr
    )
    different = tuple(
        f"{s} v{v}: id {i} at the primary, {dr[(s, v)]} at the DR site"
        for (s, v), i in sorted(primary.items())
        if (s, v) in dr and dr[(s, v)] != i
    )
    return RegistryComparison(len(dr), len(primary), missing, different)


@dataclass
class DrStatus:
    """What ``govesb dr status`` shows."""

    at_ms: int
    primary: str
    dr: str
    primary_reachable: bool
    heartbeat_ms: int | None
    partitions: list[PartitionLag]
    groups: list[GroupState]
    registry: RegistryComparison | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_lag(self) -> int | None:
        """Records at the primary not yet at the DR site; None when the primary is not read."""
        if not self.primary_reachable:
            return None
        return sum(p.lag or 0 for p in self.partitions)

    @property
    def replicated_through(self) -> str | None:
        """When the newest replicated heartbeat was written into the primary (ISO 8601)."""
        return None if self.heartbeat_ms is None else _iso(self.heartbeat_ms)

    @property
    def heartbeat_age_s(self) -> float | None:
        """Seconds since the newest replicated heartbeat was written into the primary."""
        return (
            None if self.heartbeat_ms is None else max(0.0, (self.at_ms - self.heartbeat_ms) / 1000)
        )

    def problems(self, max_heartbeat_age_s: float) -> list[str]:
        """What an operator must look at; empty when the DR site is in step."""
        found = list(self.notes)
        if not self.primary_reachable:
            found.append(f"the primary cluster ({self.primary}) does not answer")
        age = self.heartbeat_age_s
        if age is None:
            found.append(
                "no heartbeat from the primary has reached the DR site: is MirrorMaker 2 running?"
            )
        elif age > max_heartbeat_age_s:
            found.append(
                f"the newest replicated heartbeat is {age:.0f}s old: replication is stalled"
            )
        missing = [p for p in self.partitions if p.dr_end is None and (p.primary_end or 0) > 0]
        if missing:
            found.append(f"{len(missing)} partition(s) with records are not at the DR site yet")
        if self.registry is not None and (self.registry.missing or self.registry.different):
            found.append(
                f"schema registry: {len(self.registry.missing)} version(s) missing and "
                f"{len(self.registry.different)} with other ids at the DR site"
            )
        return found

    def as_json(self, max_heartbeat_age_s: float) -> dict[str, Any]:
        """The status as plain JSON types (``--json``)."""
        return {
            "at": _iso(self.at_ms),
            "primary": {"bootstrap": self.primary, "reachable": self.primary_reachable},
            "dr": {"bootstrap": self.dr},
            "heartbeat_age_s": self.heartbeat_age_s,
            "replicated_through": self.replicated_through,
            "total_lag": self.total_lag,
            "partitions": [{**asdict(p), "lag": p.lag} for p in self.partitions],
            "groups": [asdict(g) for g in self.groups],
            "registry": None if self.registry is None else asdict(self.registry),
            "problems": self.problems(max_heartbeat_age_s),
        }


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- failover


@dataclass(frozen=True)
class ActiveSite:
    """The active-site file: where the bus's processes connect."""

    site: str
    bootstrap_servers: str
    schema_registry_url: str | None
    since: str
    planned: bool = False
    replicated_through: str | None = None
    resend_since: str | None = None
    final_lag: int | None = None

    def env(self) -> list[str]:
        """``VAR=value`` lines that point a GovESB process at this site."""
        lines = [f"GOVESB_KAFKA__BOOTSTRAP_SERVERS={self.bootstrap_servers}"]
        if self.schema_registry_url:
            lines.append(f"GOVESB_SCHEMA_REGISTRY__URL={self.schema_registry_url}")
        return lines


def read_active_site(path: Path) -> ActiveSite | None:
    """The recorded active site, or None when no switch was recorded."""
    try:
        return ActiveSite(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def write_active_site(path: Path, site: ActiveSite) -> None:
    """Replace the file atomically: a watcher never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(asdict(site), indent=2) + "\n")
    partial.replace(path)


@dataclass(frozen=True)
class FailoverDecision:
    """Whether to switch now, and what the operator must know."""

    proceed: bool
    planned: bool
    reasons: list[str]


def decide_failover(status: DrStatus, *, force: bool) -> FailoverDecision:
    """Planned (primary answers) or unplanned; refuse what would lose data unless ``force``."""
    reasons: list[str] = []
    if status.primary_reachable:
        lag = status.total_lag or 0
        if lag:
            reasons.append(
                f"the primary still answers and {lag} record(s) there are not at the DR site: "
                "stop publishers and the gateway and let MirrorMaker catch up"
                + (" (--force: switching anyway, they are lost)" if force else ", or --force")
            )
            return FailoverDecision(force, True, reasons)
        reasons.append("planned switchover: the DR site has every record of the primary")
        return FailoverDecision(True, True, reasons)
    if status.heartbeat_ms is None:
        reasons.append(
            "no heartbeat from the primary ever reached the DR site: MirrorMaker 2 may never "
            "have replicated" + (" (--force: switching anyway)" if force else "; --force to switch")
        )
        return FailoverDecision(force, False, reasons)
    reasons.append(
        f"unplanned failover: the primary does not answer; the DR copy is complete up to about "
        f"{_iso(status.heartbeat_ms)} (the newest replicated heartbeat)"
    )
    return FailoverDecision(True, False, reasons)


def resend_since(heartbeat_ms: int | None, margin_s: float) -> str | None:
    """From when publishers re-send after an unplanned failover (None: from their start)."""
    return None if heartbeat_ms is None else _iso(heartbeat_ms - int(margin_s * 1000))
