"""Node packages the tests need, installed on demand from a pinned lock file.

A directory holding ``package.json`` and ``package-lock.json`` (``tests/asyncapi`` for the
official AsyncAPI parser, ``tests/govesb_clients`` for GovESB's Node client) is installed
with ``npm ci`` into the git-ignored cache, in a directory named after the lock file's hash,
so a second run finds it and a change of the lock installs afresh.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from streams.settings import REPO_ROOT

CACHE = REPO_ROOT / ".cache"
INSTALL_TIMEOUT_S = 600


class NodeUnavailable(RuntimeError):
    """node or npm is missing, or the packages could not be installed."""


def install(
    packages: Path,
    name: str,
    marker: str,
    cache: Path = CACHE,
    unavailable: type[RuntimeError] = NodeUnavailable,
) -> Path:
    """The ``node_modules`` directory of the packages pinned in ``packages``, installed
    into ``cache`` as ``<name>-<lock hash>`` first if ``node_modules/<marker>`` is missing.

    Raises:
        unavailable: node or npm is missing, or ``npm ci`` failed.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise unavailable(f"node and npm are needed for {name}")
    cache.mkdir(parents=True, exist_ok=True)
    # npm ci refuses a --prefix reached through a symlink (.cache may be one): use the real path.
    cache = cache.resolve()
    lock = packages / "package-lock.json"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:12]
    target = cache / f"{name}-{digest}"
    if (target / "node_modules" / marker).is_dir():
        return target / "node_modules"
    # Installed beside the target and renamed into place: a run stopped halfway leaves no
    # half-installed target, and two runs at once both end with a whole one.
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}-staging-", dir=cache))
    try:
        shutil.copy(packages / "package.json", staging)
        shutil.copy(lock, staging)
        done = subprocess.run(
            [npm, "ci", "--prefix", str(staging), "--no-audit", "--no-fund", "--loglevel=error"],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise unavailable(f"npm ci failed: {done.stderr.strip()[-2000:]}")
        try:
            staging.rename(target)
        except OSError:  # another run put it there first
            if not (target / "node_modules").is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target / "node_modules"
