"""The official AsyncAPI parser, installed on demand and run by node on documents.

``package.json`` and ``package-lock.json`` beside this file pin ``@asyncapi/parser`` and
``@asyncapi/avro-schema-parser`` (and everything they pull in); ``tests.npm.install`` puts
exactly that into the git-ignored cache. ``validate.mjs`` runs the parser.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests import npm

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "validate.mjs"
LOCK = HERE / "package-lock.json"
CACHE = npm.CACHE
PARSE_TIMEOUT_S = 120


class ParserUnavailable(RuntimeError):
    """node or npm is missing, or the parser could not be installed."""


@dataclass(frozen=True)
class Diagnostic:
    """One finding of the parser."""

    severity: str  # error, warning, info, hint
    code: str
    message: str
    path: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.severity} {self.code} at /{'/'.join(self.path)}: {self.message}"


def install(cache: Path = CACHE) -> Path:
    """The ``node_modules`` directory of the pinned parser, installed first if needed."""
    return npm.install(HERE, "asyncapi-parser", "@asyncapi/parser", cache, ParserUnavailable)


def validate(node_modules: Path, *documents: Path) -> dict[str, list[Diagnostic]]:
    """Every diagnostic of the official parser for each document (by the path as given)."""
    node = shutil.which("node")
    if node is None:
        raise ParserUnavailable("node is needed for the AsyncAPI parser")
    done = subprocess.run(
        [node, str(SCRIPT), *map(str, documents)],
        capture_output=True,
        text=True,
        timeout=PARSE_TIMEOUT_S,
        check=False,
        env={**os.environ, "NODE_PATH": str(node_modules)},
    )
    if done.returncode not in (0, 1):
        raise ParserUnavailable(f"validate.mjs could not run: {done.stderr.strip()[-2000:]}")
    report = json.loads(done.stdout)
    return {
        name: [Diagnostic(d["severity"], d["code"], d["message"], tuple(d["path"])) for d in found]
        for name, found in report.items()
    }


def errors(diagnostics: list[Diagnostic]) -> list[str]:
    """The error diagnostics, readable (warnings and hints left out)."""
    return [str(d) for d in diagnostics if d.severity == "error"]
