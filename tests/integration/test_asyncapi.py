"""``govesb catalog asyncapi`` documents pass the official AsyncAPI parser.

The real ``govesb`` writes the documents; ``@asyncapi/parser`` (with the official Avro schema
parser), pinned in tests/asyncapi/package-lock.json, installed on demand into .cache/ and run
by node, checks them. Without node and npm the tests skip locally and fail with ``CI=true``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.asyncapi import parser
from tests.conftest import EXAMPLE_REGISTRY, TestEnvironment


@pytest.fixture(scope="module")
def node_modules(test_environment: TestEnvironment) -> Path:
    try:
        return parser.install()
    except (parser.ParserUnavailable, subprocess.TimeoutExpired) as error:
        if test_environment.ci:
            pytest.fail(f"CI=true and the AsyncAPI parser is unavailable: {error}", pytrace=False)
        pytest.skip(f"the AsyncAPI parser is unavailable: {error}")


def govesb_asyncapi(out: Path, *options: str, env: dict[str, str] | None = None) -> None:
    """Run the real ``govesb catalog asyncapi`` on the example registry."""
    govesb = Path(sys.executable).with_name("govesb")
    done = subprocess.run(
        [str(govesb), "catalog", "asyncapi", str(EXAMPLE_REGISTRY), "--out", str(out), *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr


def test_whole_bus_and_institution_documents_pass_the_official_parser(
    node_modules: Path, tmp_path: Path
) -> None:
    documents = {
        tmp_path / "bus.json": (),
        tmp_path / "utumishi.yaml": ("--institution", "utumishi"),
        tmp_path / "nida.json": ("--institution", "nida"),
    }
    for out, options in documents.items():
        govesb_asyncapi(out, *options)
    sasl = tmp_path / "nida-sasl.json"  # a cluster that needs SCRAM over TLS
    govesb_asyncapi(
        sasl,
        "--institution",
        "nida",
        env={
            "GOVESB_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "GOVESB_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        },
    )
    documents[sasl] = ()
    report = parser.validate(node_modules, *documents)
    assert set(report) == {str(path) for path in documents}
    for name, diagnostics in report.items():
        assert parser.errors(diagnostics) == [], name
    nida = json.loads((tmp_path / "nida.json").read_text(encoding="utf-8"))
    assert [m["$ref"] for m in nida["operations"]["nida.publish"]["messages"]] == [
        "#/channels/ingress/messages/tz.go.nida.CitizenRegistered"
    ]


def test_the_parser_reports_what_is_wrong(node_modules: Path, tmp_path: Path) -> None:
    """Not a parser that passes everything: a broken Avro schema and an operation sending a
    message its channel does not carry are errors."""
    good = tmp_path / "nida.json"
    govesb_asyncapi(good, "--institution", "nida")
    document = json.loads(good.read_text(encoding="utf-8"))
    message = document["components"]["messages"]["tz.go.nida.CitizenRegistered"]
    message["payload"]["schema"]["fields"][0]["type"] = "strin"
    bad_avro = tmp_path / "bad-avro.json"
    bad_avro.write_text(json.dumps(document), encoding="utf-8")

    document = json.loads(good.read_text(encoding="utf-8"))
    document["operations"]["nida.publish"]["messages"] = [
        {"$ref": "#/channels/ingress/messages/tz.go.rita.BirthRegistered"}
    ]
    bad_ref = tmp_path / "bad-ref.json"
    bad_ref.write_text(json.dumps(document), encoding="utf-8")

    report = parser.validate(node_modules, good, bad_avro, bad_ref)
    assert parser.errors(report[str(good)]) == []
    [avro] = [d for d in report[str(bad_avro)] if d.severity == "error"]
    assert avro.code == "avro-schema"
    assert "strin" in avro.message
    assert avro.path[:3] == ("components", "messages", "tz.go.nida.CitizenRegistered")
    assert any(
        d.severity == "error" and "tz.go.rita.BirthRegistered" in d.message
        for d in report[str(bad_ref)]
    )
