"""The official AsyncAPI parser, installed on demand and run by node on documents.

``package.json`` and ``package-lock.json`` beside this file pin ``@asyncapi/parser`` and
``@asyncapi/avro-schema-parser`` (and everything they pull in). ``npm ci`` installs exactly
that into the git-ignored cache, in a directory named after the lock file's hash, so a second
run finds it and a change of the lock installs afresh. ``validate.mjs`` runs the parser.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from streams.settings import REPO_ROOT

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "validate.mjs"
LOCK = HERE / "package-lock.json"
CACHE = REPO_ROOT / ".cache"
INSTALL_TIMEOUT_S = 600
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
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise ParserUnavailable("node and npm are needed for the AsyncAPI parser")
    cache.mkdir(parents=True, exist_ok=True)
    # npm ci refuses a --prefix reached through a symlink (.cache may be one): use the real path.
    cache = cache.resolve()
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()[:12]
    target = cache / f"asyncapi-parser-{digest}"
    if (target / "node_modules" / "@asyncapi" / "parser").is_dir():
        return target / "node_modules"
    # Installed beside the target and renamed into place: a run stopped halfway leaves no
    # half-installed target, and two runs at once both end with a whole one.
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}-staging-", dir=cache))
    try:
        shutil.copy(HERE / "package.json", staging)
        shutil.copy(LOCK, staging)
        done = subprocess.run(
            [npm, "ci", "--prefix", str(staging), "--no-audit", "--no-fund", "--loglevel=error"],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise ParserUnavailable(f"npm ci failed: {done.stderr.strip()[-2000:]}")
        try:
            staging.rename(target)
        except OSError:  # another run put it there first
            if not (target / "node_modules").is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target / "node_modules"


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
