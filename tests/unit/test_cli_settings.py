"""A missing or malformed setting ends any ``govesb`` command with one line and exit code 2:
the line names the variable (or option) and what is wrong, never its value; no traceback.
Each case fails before anything is contacted, so no broker or registry is needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connectors.cli import app
from streams.settings import REPO_ROOT, bootstrap_list, registry_urls

SECRET = "s3cret-value-9f2c"  # noqa: S105 - must never be printed
PUBLISH = [
    "publish", "--as", "nida", "--type", "tz.go.nida.CitizenRegistered",
    "--key-file", str(REPO_ROOT / "deploy/demo-keys/nida.key.pem"), "--sample",
]  # fmt: skip


def _refused(args: list[str], env: dict[str, str]) -> str:
    """The one line ``govesb args`` printed before exiting with 2."""
    result = CliRunner().invoke(app, args, env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("env", "named", "why"),
    [
        ({"GOVESB_SCHEMA_REGISTRY__URL": ""}, "GOVESB_SCHEMA_REGISTRY__URL", "is empty"),
        ({"GOVESB_SCHEMA_REGISTRY__URL": f"registry.internal/{SECRET}"},
         "GOVESB_SCHEMA_REGISTRY__URL", "must be an http:// or https:// URL"),
        ({"GOVESB_SCHEMA_REGISTRY__URL": f"https://user:{SECRET}@registry:port/x"},
         "GOVESB_SCHEMA_REGISTRY__URL", "is not a URL"),
        ({"GOVESB_KAFKA__BOOTSTRAP_SERVERS": ""}, "GOVESB_KAFKA__BOOTSTRAP_SERVERS", "is empty"),
        ({"GOVESB_KAFKA__BOOTSTRAP_SERVERS": " , "}, "GOVESB_KAFKA__BOOTSTRAP_SERVERS",
         "is empty"),
        ({"GOVESB_KAFKA__BOOTSTRAP_SERVERS": "broker:9092,,broker2:9092"},
         "GOVESB_KAFKA__BOOTSTRAP_SERVERS", "not host:port"),
        ({"GOVESB_KAFKA__BOOTSTRAP_SERVERS": "broker:nine"}, "GOVESB_KAFKA__BOOTSTRAP_SERVERS",
         "port"),
        ({"GOVESB_KAFKA__SECURITY_PROTOCOL": "TLS"}, "GOVESB_KAFKA__SECURITY_PROTOCOL",
         "'PLAINTEXT', 'SSL'"),
        ({"GOVESB_KAFKA__SASL_MECHANISM": SECRET}, "GOVESB_KAFKA__SASL_MECHANISM", "'PLAIN'"),
        ({"GOVESB_KAFKA": "{" + SECRET}, "GOVESB_KAFKA", "cannot be read"),
        ({"GOVESB_TOPICS__RETENTION_DAYS": "a week"}, "GOVESB_TOPICS__RETENTION_DAYS",
         "valid integer"),
    ],
)  # fmt: skip
def test_publish_with_a_malformed_connection_setting_prints_one_line(
    env: dict[str, str], named: str, why: str
) -> None:
    line = _refused(PUBLISH, env)
    assert named in line
    assert why in line
    assert SECRET not in line


def test_every_malformed_setting_is_named_on_the_one_line() -> None:
    line = _refused(
        PUBLISH, {"GOVESB_SCHEMA_REGISTRY__URL": "", "GOVESB_KAFKA__BOOTSTRAP_SERVERS": ""}
    )
    assert "GOVESB_SCHEMA_REGISTRY__URL" in line
    assert "GOVESB_KAFKA__BOOTSTRAP_SERVERS" in line


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--bootstrap", ""], "--bootstrap"),
        (["--bootstrap", "a b"], "--bootstrap"),
        (["--schema-registry", "localhost:8081"], "--schema-registry"),
    ],
)
def test_a_malformed_top_level_option_is_named_as_the_option(
    options: list[str], named: str
) -> None:
    line = _refused([*options, *PUBLISH], {})
    assert line.startswith(f"error: {named}: ")


def test_an_option_replaces_a_malformed_variable_instead_of_failing_on_it() -> None:
    result = CliRunner().invoke(
        app,
        ["--schema-registry", "http://registry:8081", "--bootstrap", "broker:9092", "version"],
        env={"GOVESB_SCHEMA_REGISTRY__URL": "", "GOVESB_KAFKA__BOOTSTRAP_SERVERS": " "},
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("govesb ")
    # A process's own option too: the worker gets past its settings to the key check.
    line = _refused(["worker", "--web-port", "7000"], {"GOVESB_WEB_PORT": "not-a-port"})
    assert "GOVESB_SIGNING_KEY_FILE" in line


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["worker"], {"GOVESB_WEB_PORT": "not-a-port"}, "GOVESB_WEB_PORT"),
        (["worker"], {"GOVESB_MAX_IN_FLIGHT": "many"}, "GOVESB_MAX_IN_FLIGHT"),
        (["connect", "gateway"], {"GOVESB_CLIENTS": SECRET}, "GOVESB_CLIENTS"),
        (["connect", "gateway"], {"GOVESB_CLIENTS__NIDA": SECRET[:8]}, "GOVESB_CLIENTS__NIDA"),
        (["connect", "gateway"], {"GOVESB_CLIENTS__NIDA": ""}, "GOVESB_CLIENTS__NIDA"),
        (["connect", "gateway"], {"GOVESB_TOKEN_FAILURES_PER_IP": "0"},
         "GOVESB_TOKEN_FAILURES_PER_IP"),
        (["connect", "http-sink", "--subscriber", "utumishi"], {"GOVESB_MAX_ATTEMPTS": "x"},
         "GOVESB_MAX_ATTEMPTS"),
        (["dr", "status"], {"GOVESB_DR__MAX_HEARTBEAT_AGE_S": "old"},
         "GOVESB_DR__MAX_HEARTBEAT_AGE_S"),
        (["dr", "status"], {"GOVESB_DR__DR__KAFKA__BOOTSTRAP_SERVERS": ""},
         "GOVESB_DR__DR__KAFKA__BOOTSTRAP_SERVERS"),
        (["dr", "status", "--dr", ""], {}, "--dr"),
        (["dr", "status", "--dr", "dr:9092", "--dr-registry", SECRET], {}, "--dr-registry"),
    ],
)  # fmt: skip
def test_process_and_dr_settings_malformed_print_one_line(
    args: list[str], env: dict[str, str], named: str
) -> None:
    line = _refused(args, env)
    assert named in line
    assert SECRET not in line


@pytest.mark.parametrize(
    ("servers", "listed"),
    [
        ("a:1", "a:1"),
        (" a:1 , b:2 ", "a:1,b:2"),
        ("broker", "broker"),
        ("[::1]:9092", "[::1]:9092"),
    ],
)
def test_a_bootstrap_list_is_kept_without_spaces(servers: str, listed: str) -> None:
    assert bootstrap_list(servers) == listed


@pytest.mark.parametrize("servers", ["", " ", ",", "a:1,", ":9092", "a:", "a:0", "a:65536", "a b"])
def test_a_bootstrap_list_without_a_broker_or_with_a_malformed_one_is_refused(
    servers: str,
) -> None:
    with pytest.raises(ValueError, match=r"empty|port"):
        bootstrap_list(servers)


@pytest.mark.parametrize(
    "urls", ["", "registry:8081", "http://", "ftp://registry", "http://r:x", "http://a,"]
)
def test_a_registry_url_that_confluent_kafka_would_refuse_is_refused(urls: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        registry_urls(urls)


def test_registry_urls_with_paths_and_several_hosts_are_kept() -> None:
    assert registry_urls("http://a:8081/apis/ccompat/v7, https://b") == (
        "http://a:8081/apis/ccompat/v7,https://b"
    )


def test_the_govesb_process_prints_one_line_and_exits_2_for_an_empty_registry_url() -> None:
    """The installed command, as an operator runs it: no traceback, no warnings after it."""
    govesb = Path(sys.executable).with_name("govesb")
    env = {**os.environ, "GOVESB_SCHEMA_REGISTRY__URL": ""}
    done = subprocess.run(
        [str(govesb), *PUBLISH], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: GOVESB_SCHEMA_REGISTRY__URL: is empty: give the registry's http:// or https:// URL"
    ]
