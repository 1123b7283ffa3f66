"""``govesb keys generate``: a key pair on disk, the private half readable by its owner only."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.cli import keys as cli_keys
from streams.cli.keys import keys_app
from streams.contract.signing import (
    PrivateKey,
    generate_private_key,
    key_id_for,
    load_private_key,
    load_public_key,
)

runner = CliRunner()


def printed(output: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}\s*(\S+)$", output, re.MULTILINE)
    assert match, f"{label!r} not in output:\n{output}"
    return match.group(1)


@pytest.mark.parametrize(
    ("curve", "curve_name"), [("secp256k1", "secp256k1"), ("P-256", "secp256r1")]
)
def test_generate_writes_a_usable_key_pair(tmp_path: Path, curve: str, curve_name: str) -> None:
    result = runner.invoke(
        keys_app, ["generate", "-i", "tra", "--curve", curve, "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output

    key_id = printed(result.output, "key id:")
    assert key_id.startswith("tra-")
    assert printed(result.output, "curve:") == curve_name
    private_path = tmp_path / f"{key_id}.key.pem"
    public_path = tmp_path / f"{key_id}.pub.pem"
    assert sorted(tmp_path.iterdir()) == sorted([private_path, public_path])
    assert printed(result.output, "private key:") == str(private_path)
    assert printed(result.output, "public key:") == str(public_path)
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600

    private_key = load_private_key(private_path.read_text())
    registry_public_key = load_public_key(
        printed(result.output, "public key (base64 DER, for the registry):")
    )
    assert registry_public_key == load_public_key(public_path.read_text())
    assert registry_public_key.curve == curve_name
    assert registry_public_key.verify(b"event bytes", private_key.sign(b"event bytes"))

    assert private_key.to_base64_der() not in result.output
    assert "PRIVATE KEY" not in result.output


@pytest.fixture
def same_key_every_time(monkeypatch: pytest.MonkeyPatch) -> PrivateKey:
    """Every run generates the same key, hence the same key id and the same file names."""
    key = generate_private_key("secp256k1")
    monkeypatch.setattr(cli_keys, "generate_private_key", lambda curve: key)
    return key


def test_second_run_refuses_to_overwrite(tmp_path: Path, same_key_every_time: PrivateKey) -> None:
    arguments = ["generate", "--institution", "tra", "--out", str(tmp_path)]
    first = runner.invoke(keys_app, arguments)
    assert first.exit_code == 0, first.output
    files = {path: path.read_bytes() for path in tmp_path.iterdir()}
    assert len(files) == 2

    second = runner.invoke(keys_app, arguments)
    assert second.exit_code == 1
    assert "already exists; not overwriting it" in second.output
    assert {path: path.read_bytes() for path in tmp_path.iterdir()} == files


def test_existing_public_key_file_alone_blocks_the_pair(
    tmp_path: Path, same_key_every_time: PrivateKey
) -> None:
    key_id = key_id_for("tra", same_key_every_time.public_key())
    (tmp_path / f"{key_id}.pub.pem").write_text("someone else's\n")

    result = runner.invoke(keys_app, ["generate", "-i", "tra", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "already exists" in result.output
    assert not (tmp_path / f"{key_id}.key.pem").exists()
    assert (tmp_path / f"{key_id}.pub.pem").read_text() == "someone else's\n"


@pytest.mark.parametrize("institution", ["", "TRA", "../etc", "a/b", "x"])
def test_institution_id_must_be_a_registry_id(tmp_path: Path, institution: str) -> None:
    result = runner.invoke(keys_app, ["generate", "-i", institution, "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "institution id" in result.output
    assert list(tmp_path.iterdir()) == []


def test_unknown_curve_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(
        keys_app, ["generate", "-i", "tra", "--curve", "P-384", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert list(tmp_path.iterdir()) == []
