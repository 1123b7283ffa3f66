"""The launcher's pure parts and its errors, without starting anything."""

from __future__ import annotations

import base64
import hashlib
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.kafka import launcher, runtime, tls


def test_cluster_ids_are_urlsafe_base64_of_16_bytes_and_never_start_with_a_dash() -> None:
    ids = {launcher.new_cluster_id() for _ in range(500)}
    assert len(ids) == 500
    for cluster_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)
        assert not cluster_id.startswith("-")


def test_broker_properties_describe_a_single_node_kraft_broker_on_loopback(
    tmp_path: Path,
) -> None:
    text = launcher.broker_properties(tmp_path, 19092, 19093)
    props = dict(line.split("=", 1) for line in text.splitlines())
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == props["listeners"]
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert props["log.dirs"] == str(tmp_path / "log")
    assert props["offsets.topic.replication.factor"] == "1"


def test_the_secure_mode_adds_a_sasl_ssl_listener_with_acls_enforced(tmp_path: Path) -> None:
    files = tls.BrokerTls(ca_file=tmp_path / "ca.pem", keystore=tmp_path / "ks.pem")
    secure = tls.SecureEndpoint(port=19094, tls=files, admin_user="root", admin_password="pw")  # noqa: S106
    text = launcher.broker_properties(tmp_path, 19092, 19093, secure)
    props = dict(line.split("=", 1) for line in text.splitlines())
    assert props["listeners"] == (
        "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093,SASL_SSL://127.0.0.1:19094"
    )
    assert props["listener.security.protocol.map"].endswith(",SASL_SSL:SASL_SSL")
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["authorizer.class.name"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    )
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:root;User:ANONYMOUS"
    assert (props["ssl.keystore.type"], props["ssl.keystore.location"]) == (
        "PEM",
        str(files.keystore),
    )
    assert props["auto.create.topics.enable"] == "false"
    # The default broker has none of it.
    plain = launcher.broker_properties(tmp_path, 19092, 19093)
    assert "SASL" not in plain
    assert "authorizer" not in plain


def test_the_admin_credential_is_formatted_salted_never_as_the_password() -> None:
    argument = tls.scram_credential("admin", "pa55word", iterations=4096)
    assert "pa55word" not in argument
    match = re.fullmatch(
        r'SCRAM-SHA-512=\[name=admin,iterations=4096,salt="([^"]+)",saltedpassword="([^"]+)"\]',
        argument,
    )
    assert match is not None
    salt, salted = (base64.b64decode(group) for group in match.groups())
    # RFC 5802 SaltedPassword := Hi(password, salt, i) = PBKDF2 with HMAC-SHA-512.
    assert salted == hashlib.pbkdf2_hmac("sha512", b"pa55word", salt, 4096)


def test_the_broker_certificate_is_for_loopback_and_issued_by_the_ca(tmp_path: Path) -> None:
    files = tls.write_broker_tls(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(files.ca_file.read_bytes())
    pem = files.keystore.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # unencrypted PKCS#8, as Kafka reads
    leaf, issuer = x509.load_pem_x509_certificates(pem[pem.index(b"-----BEGIN CERTIFICATE") :])
    assert issuer == ca
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert stat.S_IMODE(files.keystore.stat().st_mode) == 0o600
    # Kept on a second call: clients given the CA keep working across restarts.
    assert tls.write_broker_tls(tmp_path / "tls") == files
    assert files.ca_file.read_bytes() == ca.public_bytes(tls.serialization.Encoding.PEM)


def test_the_admin_password_is_kept_with_the_data_dir(tmp_path: Path) -> None:
    first = tls.prepare_secure_listener(tmp_path / "tls", tls.SecureListener(), 19094)
    assert len(first.admin_password) >= 24
    assert first.admin_password not in repr(first)
    assert stat.S_IMODE(first.password_file.stat().st_mode) == 0o600
    again = tls.prepare_secure_listener(tmp_path / "tls", tls.SecureListener(), 19094)
    assert (again.admin_password, again.tls) == (first.admin_password, first.tls)
    other = tls.SecureListener(admin_password="another")  # noqa: S106 - a test value
    with pytest.raises(ValueError, match="formatted with another admin password"):
        tls.prepare_secure_listener(tmp_path / "tls", other, 19094)


def test_secure_addresses_are_refused_on_a_plain_broker(tmp_path: Path) -> None:
    broker = launcher.KafkaBroker(tmp_path)
    with pytest.raises(runtime.LauncherError, match="no secure listener"):
        _ = broker.secure_bootstrap


def _fake_tool(directory: Path, name: str, script: str) -> None:
    tool = directory / name
    tool.write_text(f"#!/bin/sh\n{script}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


def test_missing_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(runtime.LauncherError, match=r"Java not found on PATH.*Java 17\+"):
        runtime.require_java()


def test_old_java_is_refused_with_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_tool(tmp_path, "java", "echo 'openjdk version \"11.0.22\" 2024-01-16' >&2")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(runtime.LauncherError, match=r"is Java 11; GovESB needs Java 17"):
        runtime.require_java()


def test_java_17_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_tool(tmp_path, "java", "echo 'openjdk version \"17.0.15\" 2025-04-15' >&2")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert runtime.require_java() == str(tmp_path / "java")


def test_missing_maven_is_a_clear_error_before_any_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(runtime.LauncherError, match=r"Maven \(mvn\) not found on PATH"):
        runtime.fetch_runtime(tmp_path / "cache", say=lambda _: None)
    assert not (tmp_path / "cache" / "m2").exists()


def test_a_failed_download_names_the_runtime_and_maven_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mvn is present but cannot reach anything: it fails as an unreachable Maven Central does.
    _fake_tool(tmp_path, "mvn", "echo '[ERROR] Could not transfer artifact: Unknown host'; exit 1")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(runtime.LauncherError) as raised:
        runtime.fetch_runtime(tmp_path / "cache", say=lambda _: None)
    message = str(raised.value)
    assert "downloading Apache Kafka 4.1" in message
    assert "mvn exit 1" in message
    assert "Unknown host" in message
    # Nothing half-fetched is left to be mistaken for a complete cache next time.
    assert not list((tmp_path / "cache").glob("kafka-*/.complete"))
