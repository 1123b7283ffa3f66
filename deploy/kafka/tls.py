"""The local broker's secure listener: TLS certificates, SCRAM credential, server properties.

``KafkaBroker(security=SecureListener())`` adds a ``SASL_SSL`` listener (SCRAM-SHA-512) on
which the StandardAuthorizer enforces ACLs. Its certificate, which clients verify host name
included, is issued here for ``127.0.0.1`` and ``localhost`` by a throw-away CA made for the
data dir alone. Kafka reads the PEM keystore directly (``ssl.keystore.type=PEM``: unencrypted
PKCS#8 key, then the certificate chain); clients get the CA's certificate
(``GOVESB_KAFKA__SSL_CAFILE``). Keys are P-256: quick to make and to use.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_NAMES = ("127.0.0.1", "localhost")
SCRAM_MECHANISM = "SCRAM-SHA-512"
ADMIN_PASSWORD_FILE = "admin.password"  # noqa: S105 - the name of the file that holds it
STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
VALIDITY = dt.timedelta(days=365)
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA's key and self-signed certificate."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def pem(self) -> bytes:
        """The CA certificate, PEM: what clients trust."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class BrokerTls:
    """Where the broker's TLS files are."""

    ca_file: Path
    """PEM certificate of the CA that issued the broker's certificate (for clients)."""
    keystore: Path
    """PEM keystore of the broker: its private key, its certificate, the CA's certificate."""


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GovESB local test"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def new_ca(common_name: str = "GovESB local test CA") -> CertificateAuthority:
    """A fresh CA, valid for a year from a minute ago (clock skew)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(key, certificate)


def issue_server_certificate(
    ca: CertificateAuthority, hosts: tuple[str, ...] = LOOPBACK_NAMES
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server key and certificate signed by ``ca``, valid for ``hosts`` (IPs or DNS names)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return key, certificate


def write_broker_tls(directory: Path, hosts: tuple[str, ...] = LOOPBACK_NAMES) -> BrokerTls:
    """A new CA and broker certificate in ``directory`` (private files readable by owner only).

    Returns the existing files when both are already there, so clients given the CA keep
    working across restarts of a broker with a kept data dir.
    """
    tls = BrokerTls(ca_file=directory / "ca.pem", keystore=directory / "broker-keystore.pem")
    if tls.ca_file.exists() and tls.keystore.exists():
        return tls
    directory.mkdir(parents=True, exist_ok=True)
    ca = new_ca()
    key, certificate = issue_server_certificate(ca, hosts)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    chain = certificate.public_bytes(serialization.Encoding.PEM) + ca.pem
    tls.keystore.touch(mode=0o600)
    tls.keystore.write_bytes(key_pem + chain)
    tls.ca_file.write_bytes(ca.pem)
    return tls


@dataclass(frozen=True)
class SecureListener:
    """Ask :class:`KafkaBroker` for a ``SASL_SSL`` listener with ACLs enforced.

    Clients authenticate with SCRAM-SHA-512 over TLS (a certificate for 127.0.0.1 and
    localhost, issued by a CA made for the data dir: ``KafkaBroker.secure.tls.ca_file``). The
    StandardAuthorizer allows nothing without an ACL, except to ``admin_user``, a super user
    whose SCRAM credential is written when the storage is formatted. Without
    ``admin_password`` one is generated; either way it is kept (owner-readable only) in the
    data dir, so a kept data dir restarts with the password it was formatted with.
    """

    admin_user: str = "admin"
    admin_password: str | None = field(default=None, repr=False)
    port: int | None = None


@dataclass(frozen=True)
class SecureEndpoint:
    """The secure listener of a launched broker: where it is, its CA, the super user's login."""

    port: int
    tls: BrokerTls
    admin_user: str
    admin_password: str = field(repr=False)

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the ``SASL_SSL`` listener."""
        return f"127.0.0.1:{self.port}"

    @property
    def admin_credentials(self) -> tuple[str, str]:
        """User name and password of the super user."""
        return self.admin_user, self.admin_password

    @property
    def password_file(self) -> Path:
        """Where the super user's password is kept (readable by its owner only)."""
        return self.tls.keystore.parent / ADMIN_PASSWORD_FILE

    def client_config(self, user: str, password: str) -> dict[str, Any]:
        """librdkafka settings (confluent-kafka, kcat ``-X``) to log in as ``user``."""
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "sasl_ssl",
            "sasl.mechanism": SCRAM_MECHANISM,
            "sasl.username": user,
            "sasl.password": password,
            "ssl.ca.location": str(self.tls.ca_file),
        }

    def client_env(self, user: str, password: str) -> dict[str, str]:
        """``GOVESB_KAFKA__*`` variables that make a GovESB process log in as ``user``."""
        return {
            "GOVESB_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "GOVESB_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "GOVESB_KAFKA__SASL_MECHANISM": SCRAM_MECHANISM,
            "GOVESB_KAFKA__SASL_USERNAME": user,
            "GOVESB_KAFKA__SASL_PASSWORD": password,
            "GOVESB_KAFKA__SSL_CAFILE": str(self.tls.ca_file),
        }

    def add_scram_user(self, user: str, password: str, timeout: float = 30.0) -> None:
        """Create or change ``user``'s SCRAM-SHA-512 credential (as the super user).

        What an operator does for each institution and bus process; ``govesb registry apply``
        sets the users' ACLs but never their credentials.
        """
        # Project dependency, imported lazily; public in confluent_kafka.admin, typed here.
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.admin._scram import (
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialUpsertion,
        )

        admin = AdminClient({**self.client_config(*self.admin_credentials), "log_level": 0})
        upsert = UserScramCredentialUpsertion(
            user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), password.encode()
        )
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result(timeout=timeout)


def prepare_secure_listener(directory: Path, security: SecureListener, port: int) -> SecureEndpoint:
    """Certificates and the super user's password in ``directory``, kept across restarts.

    Raises:
        ValueError: ``security`` names another admin password than the one kept there (the
            storage was formatted with that one).
    """
    tls = write_broker_tls(directory)
    secret = directory / ADMIN_PASSWORD_FILE
    if secret.exists():
        password = secret.read_text().strip()
        if security.admin_password not in (None, password):
            raise ValueError(
                f"{directory.parent} was formatted with another admin password; use that one "
                "or a fresh data dir"
            )
    else:
        password = security.admin_password or secrets.token_urlsafe(24)
        secret.touch(mode=0o600)
        secret.write_text(password)
    return SecureEndpoint(port, tls, security.admin_user, password)


def secure_listener_properties(secure: SecureEndpoint) -> dict[str, str]:
    """server.properties of the ``SASL_SSL`` listener and the authorizer, beyond the listener
    lists (which ``launcher.broker_properties`` extends)."""
    return {
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(secure.tls.keystore),
        "ssl.client.auth": "none",
        "authorizer.class.name": STANDARD_AUTHORIZER,
        "super.users": f"User:{secure.admin_user};User:ANONYMOUS",
        "allow.everyone.if.no.acl.found": "false",
        # Topics appear only through `govesb registry apply` (or an admin), as in production:
        # a client's Metadata request must not create one.
        "auto.create.topics.enable": "false",
    }


def scram_credential(user: str, password: str, iterations: int = 8192) -> str:
    """``kafka-storage format --add-scram`` argument for ``user``, without the password itself.

    The salted password (RFC 5802: PBKDF2 with HMAC-SHA-512) is computed here, so the
    password never appears in a process list.
    """
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return (
        f"{SCRAM_MECHANISM}=[name={user},iterations={iterations},"
        f'salt="{base64.b64encode(salt).decode()}",'
        f'saltedpassword="{base64.b64encode(salted).decode()}"]'
    )
