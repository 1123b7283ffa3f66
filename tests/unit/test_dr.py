"""DR: MirrorMaker 2 records, lag, offset translation state, the failover decision, the
active-site file, the mm2.properties template and the ``govesb dr`` settings."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connectors.cli import app
from deploy.dr.mirror import MirrorOptions, parse_properties, render
from streams.dr.sites import (
    ActiveSite,
    Checkpoint,
    DrCliSettings,
    DrSettings,
    DrSiteSettings,
    DrStatus,
    GroupState,
    PartitionLag,
    compare_registries,
    decide_failover,
    group_states,
    latest_checkpoints,
    parse_checkpoint,
    parse_heartbeat,
    read_active_site,
    replication_lag,
    resend_since,
    resolve_sites,
    write_active_site,
)
from streams.settings import KafkaSettings, SchemaRegistrySettings


def _string(text: str) -> bytes:
    """Kafka protocol STRING: int16 length, UTF-8 bytes (what MirrorMaker's Struct writes)."""
    return struct.pack(">h", len(text.encode())) + text.encode()


def _heartbeat(source: str, target: str, ms: int) -> tuple[bytes, bytes]:
    return _string(source) + _string(target), struct.pack(">hq", 0, ms)


def _checkpoint(group: str, topic: str, partition: int, up: int, down: int) -> tuple[bytes, bytes]:
    key = _string(group) + _string(topic) + struct.pack(">i", partition)
    return key, struct.pack(">hqq", 0, up, down) + _string("")


# --------------------------------------------------------------------------- records


def test_a_heartbeat_record_is_read_as_mirrormaker_writes_it() -> None:
    beat = parse_heartbeat(*_heartbeat("dr", "primary", 1_795_829_732_788))
    assert (beat.source, beat.target, beat.timestamp_ms) == ("dr", "primary", 1_795_829_732_788)


def test_a_checkpoint_record_is_read_with_its_group_partition_and_offsets() -> None:
    key, value = _checkpoint("govesb-sink-utumishi", "esb.deliver.utumishi", 4, 120, 119)
    assert parse_checkpoint(key, value, timestamp_ms=7) == Checkpoint(
        "govesb-sink-utumishi", "esb.deliver.utumishi", 4, 120, 119, 7
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"", b""),
        (_string("dr"), struct.pack(">hq", 0, 1)),  # no target
        (_string("dr") + _string("primary"), struct.pack(">hq", 1, 1)),  # unknown version
        (struct.pack(">h", 50) + b"dr", struct.pack(">hq", 0, 1)),  # length past the end
    ],
)
def test_what_is_not_a_heartbeat_is_refused(key: bytes, value: bytes) -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        parse_heartbeat(key, value)


def test_the_last_checkpoint_of_each_group_partition_wins() -> None:
    older = Checkpoint("g", "esb.ingress.rita", 0, 10, 10, 1)
    newer = Checkpoint("g", "esb.ingress.rita", 0, 15, 15, 2)
    other = Checkpoint("g", "esb.ingress.rita", 1, 3, 3, 1)
    assert latest_checkpoints([older, other, newer]) == {
        ("g", "esb.ingress.rita", 0): newer,
        ("g", "esb.ingress.rita", 1): other,
    }


# --------------------------------------------------------------------------- lag


def test_lag_is_what_the_primary_has_beyond_the_dr_copy() -> None:
    lags = replication_lag(
        {("esb.ingress.rita", 0): 100, ("esb.ingress.rita", 1): 40, ("esb.audit", 0): 7},
        {("esb.ingress.rita", 0): 97, ("esb.ingress.rita", 1): 40, ("kafkasql-journal", 0): 30},
    )
    assert [(p.topic, p.partition, p.lag) for p in lags] == [
        ("esb.audit", 0, 7),  # not at the DR site at all: everything lags
        ("esb.ingress.rita", 0, 3),
        ("esb.ingress.rita", 1, 0),
        ("kafkasql-journal", 0, 0),  # DR ahead (its registry's own writes): not negative
    ]
    assert lags[0].dr_end is None


def test_without_the_primary_lag_is_unknown_not_zero() -> None:
    [lag] = replication_lag(None, {("esb.ingress.rita", 0): 97})
    assert lag == PartitionLag("esb.ingress.rita", 0, None, 97)
    assert lag.lag is None


def test_group_state_counts_checkpoints_how_far_they_trail_and_what_mm2_synced() -> None:
    checkpoints = latest_checkpoints(
        [
            Checkpoint("govesb-pipeline", "esb.ingress.rita", 0, 90, 90, 1_000),
            Checkpoint("govesb-pipeline", "esb.ingress.rita", 1, 50, 49, 2_000),
        ]
    )
    primary = {
        "govesb-pipeline": {
            ("esb.ingress.rita", 0): 100,
            ("esb.ingress.rita", 1): 50,
            ("esb.ingress.rita", 2): 8,  # committed, never checkpointed
            ("esb.ingress.rita", 3): 0,  # nothing read there: nothing to translate
        },
        "govesb-sink-utumishi": {("esb.deliver.utumishi", 0): 5},
    }
    dr = {"govesb-pipeline": {("esb.ingress.rita", 0): 90, ("esb.ingress.rita", 1): 12}}
    assert group_states(checkpoints, primary, dr) == [
        GroupState("govesb-pipeline", 2, 2_000, behind=10, unchecked=1, synced=1),
        GroupState("govesb-sink-utumishi", 0, None, behind=0, unchecked=1, synced=0),
    ]
    [unknown] = group_states(checkpoints, None, dr)
    assert (unknown.behind, unknown.unchecked) == (None, 0)


def test_registries_must_number_every_version_alike() -> None:
    primary = {("tz.go.rita.DeathRegistered", 1): 3, ("delivery.utumishi-deaths", 1): 11}
    assert compare_registries(primary, dict(primary)).different == ()
    moved = compare_registries(primary, {("tz.go.rita.DeathRegistered", 1): 4})
    assert moved.missing == ("delivery.utumishi-deaths v1 (id 11)",)
    assert moved.different == (
        "tz.go.rita.DeathRegistered v1: id 3 at the primary, 4 at the DR site",
    )
    assert compare_registries(None, primary).primary_versions is None


# --------------------------------------------------------------------------- failover


def _status(*, primary: bool, lag: int = 0, heartbeat_ms: int | None = 1_000_000) -> DrStatus:
    partitions = [PartitionLag("esb.ingress.rita", 0, 50 + lag if primary else None, 50)]
    return DrStatus(1_002_000, "p:9092", "d:9092", primary, heartbeat_ms, partitions, [])


def test_a_planned_switchover_needs_every_record_at_the_dr_site() -> None:
    assert decide_failover(_status(primary=True), force=False).proceed
    refused = decide_failover(_status(primary=True, lag=4), force=False)
    assert not refused.proceed
    assert "4 record(s)" in refused.reasons[0]
    assert refused.planned
    forced = decide_failover(_status(primary=True, lag=4), force=True)
    assert forced.proceed
    assert "lost" in forced.reasons[0]


def test_an_unplanned_failover_says_how_far_the_copy_is_complete() -> None:
    decision = decide_failover(_status(primary=False), force=False)
    assert decision.proceed
    assert not decision.planned
    assert "1970-01-01T00:16:40.000+00:00" in decision.reasons[0]
    never = decide_failover(_status(primary=False, heartbeat_ms=None), force=False)
    assert not never.proceed
    assert decide_failover(_status(primary=False, heartbeat_ms=None), force=True).proceed


def test_publishers_resend_from_the_newest_heartbeat_minus_the_margin() -> None:
    assert resend_since(1_000_000, 10) == "1970-01-01T00:16:30.000+00:00"
    assert resend_since(None, 10) is None


def test_status_problems_name_what_to_look_at() -> None:
    assert _status(primary=True).problems(30) == []
    stale = _status(primary=True, heartbeat_ms=1_002_000 - 45_000)
    assert "45s old" in stale.problems(30)[0]
    assert "does not answer" in _status(primary=False).problems(30)[0]
    assert _status(primary=True, lag=3).total_lag == 3
    assert _status(primary=False).total_lag is None
    document = _status(primary=True).as_json(30)
    assert document["heartbeat_age_s"] == 2.0
    assert document["partitions"][0]["lag"] == 0
    json.dumps(document)  # plain JSON types only


def test_the_active_site_file_is_replaced_whole_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "dr" / "active-site.json"
    assert read_active_site(path) is None
    site = ActiveSite("dr", "d:9092", "http://d:8081/apis/ccompat/v7", "2026-11-28T00:00:00Z")
    write_active_site(path, site)
    assert read_active_site(path) == site
    assert [p.name for p in path.parent.iterdir()] == ["active-site.json"]
    assert site.env() == [
        "GOVESB_KAFKA__BOOTSTRAP_SERVERS=d:9092",
        "GOVESB_SCHEMA_REGISTRY__URL=http://d:8081/apis/ccompat/v7",
    ]


# --------------------------------------------------------------------------- mm2.properties


def test_the_template_renders_a_one_way_identity_flow_of_the_bus() -> None:
    properties = parse_properties(render(MirrorOptions("p:9092", "d:9092")))
    assert properties["clusters"] == "primary, dr"
    assert properties["primary.bootstrap.servers"] == "p:9092"
    assert properties["dr.bootstrap.servers"] == "d:9092"
    assert properties["primary->dr.enabled"] == "true"
    assert properties["dr->primary.enabled"] == "false"
    assert properties["replication.policy.class"] == (
        "org.apache.kafka.connect.mirror.IdentityReplicationPolicy"
    )
    # Java reads `esb\\..*` as the regex esb\..*: a literal dot after "esb".
    assert properties["primary->dr.topics"] == r"esb\..*, kafkasql-journal, kafkasql-snapshots"
    assert properties["primary->dr.groups"] == r"govesb-.*, [a-z][a-z0-9-]+\..+"
    assert properties["primary->dr.sync.group.offsets.enabled"] == "true"
    assert properties["primary->dr.sync.topic.acls.enabled"] == "false"
    assert properties["replication.factor"] == "3"


def test_a_drill_sets_every_replication_factor_to_one_and_second_intervals() -> None:
    properties = parse_properties(render(MirrorOptions("p:9092", "d:9092").drill()))
    factors = {k: v for k, v in properties.items() if k.endswith("replication.factor")}
    assert len(factors) == 7
    assert set(factors.values()) == {"1"}
    assert properties["primary->dr.emit.checkpoints.interval.seconds"] == "1"
    assert properties["primary->dr.sync.group.offsets.interval.seconds"] == "1"
    assert properties["primary->dr.offset.lag.max"] == "0"
    assert "${" not in render(MirrorOptions("p:9092", "d:9092").drill())


def test_a_group_pattern_with_a_comma_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="commas"):
        render(MirrorOptions("p", "d", groups=("[a-z]{1,3}",)))
    template = tmp_path / "mm2.properties"
    template.write_text("a = ${primary_bootstrap}\nb = ${nothing}\n")
    with pytest.raises(ValueError, match="nothing"):
        render(MirrorOptions("p", "d"), template)


# --------------------------------------------------------------------------- settings and CLI


def test_sites_come_from_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOVESB_DR__DR__KAFKA__BOOTSTRAP_SERVERS", "kafka-dr:9092")
    monkeypatch.setenv("GOVESB_DR__DR__SCHEMA_REGISTRY__URL", "http://registry-dr/apis/ccompat/v7")
    monkeypatch.setenv("GOVESB_DR__STATE_FILE", "/var/lib/govesb/active-site.json")
    settings = DrCliSettings()
    assert settings.dr.dr.kafka is not None
    assert settings.dr.dr.kafka.bootstrap_servers == "kafka-dr:9092"
    assert settings.dr.dr.schema_registry is not None
    assert settings.dr.primary.kafka is None  # the CLI's own connection is the primary
    assert settings.dr.state_file == Path("/var/lib/govesb/active-site.json")


def test_dr_commands_need_to_know_where_the_dr_cluster_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOVESB_DR__DR__KAFKA__BOOTSTRAP_SERVERS", raising=False)
    for command in ("status", "failover"):
        result = CliRunner().invoke(app, ["dr", command])
        assert result.exit_code == 2
        assert "GOVESB_DR__DR__KAFKA__BOOTSTRAP_SERVERS" in result.output


def test_a_second_failover_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "active-site.json"
    site = ActiveSite("dr", "127.0.0.1:1", None, "2026-11-28T00:00:00+00:00")
    write_active_site(state, site)
    monkeypatch.setenv("GOVESB_DR__DR__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("GOVESB_DR__STATE_FILE", str(state))
    result = CliRunner().invoke(app, ["dr", "failover"])  # no cluster is asked: none answers
    assert result.exit_code == 0, result.output
    assert "already failed over to the DR site at 2026-11-28T00:00:00+00:00" in result.output
    assert "GOVESB_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:1" in result.output
    assert read_active_site(state) == site
    # After a failback the file names the other cluster: that is no reason to do nothing.
    write_active_site(state, ActiveSite("dr", "kafka-dc2:9092", None, "2026-11-28T00:00:00Z"))
    monkeypatch.setenv("GOVESB_DR__TIMEOUT_S", "1")
    result = CliRunner().invoke(app, ["dr", "failover"])
    assert result.exit_code == 2
    assert "the DR cluster (127.0.0.1:1) does not answer" in result.output


def test_the_primary_is_the_clis_own_connection_unless_told_and_options_win() -> None:
    cli_kafka = KafkaSettings(bootstrap_servers="kafka-dc1:9092", security_protocol="SSL")
    cli_registry = SchemaRegistrySettings(url="http://registry-dc1/apis/ccompat/v7")
    dr_site = DrSiteSettings(kafka=KafkaSettings(bootstrap_servers="kafka-dc2:9092"))
    sites = resolve_sites(DrSettings(dr=dr_site), cli_kafka, cli_registry)
    assert sites.primary == cli_kafka
    assert sites.primary_registry == cli_registry
    assert sites.dr.bootstrap_servers == "kafka-dc2:9092"
    assert sites.dr_registry is None
    told = resolve_sites(
        DrSettings(dr=dr_site), cli_kafka, cli_registry,
        primary="p:1", dr="d:2", dr_registry="http://r/apis/ccompat/v7",
    )  # fmt: skip
    assert told.primary.bootstrap_servers == "p:1"
    assert told.primary.security_protocol == "SSL"  # only the address is replaced
    assert told.dr.bootstrap_servers == "d:2"
    assert told.dr_registry == SchemaRegistrySettings(url="http://r/apis/ccompat/v7")
    with pytest.raises(LookupError, match="GOVESB_DR__DR__KAFKA__BOOTSTRAP_SERVERS"):
        resolve_sites(DrSettings(), cli_kafka, cli_registry)
