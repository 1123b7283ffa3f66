"""GovESB's public client libraries, driven unmodified against the gateway.

``package.json`` and ``package-lock.json`` pin the Node client ``govesb-connector-js``;
``client.cjs`` drives it. ``python-client.txt`` pins the Python client ``govesb`` (by hash; its
distribution name is this project's own, so it is installed apart, into the cache);
``python_push.py`` drives it. Both run in processes of their own, as a client system would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests import npm

HERE = Path(__file__).resolve().parent
RUN_TIMEOUT_S = 60


class ClientUnavailable(RuntimeError):
    """The Python client could not be installed."""


def install_node_client() -> Path:
    """The ``node_modules`` holding the pinned ``govesb-connector-js``."""
    return npm.install(HERE, "govesb-connector-js", "govesb-connector-js")


def install_python_client(cache: Path = npm.CACHE) -> Path:
    """The directory holding the pinned ``govesb`` package, installed first if needed."""
    pins = HERE / "python-client.txt"
    cache.mkdir(parents=True, exist_ok=True)
    cache = cache.resolve()
    target = cache / f"govesb-python-client-{hashlib.sha256(pins.read_bytes()).hexdigest()[:12]}"
    if (target / "govesb").is_dir():
        return target
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}-staging-", dir=cache))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes",
             "--target", str(staging), "-r", str(pins)],
            capture_output=True, text=True, timeout=npm.INSTALL_TIMEOUT_S, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise ClientUnavailable(f"pip install failed: {done.stderr.strip()[-2000:]}")
        try:
            staging.rename(target)
        except OSError:  # another run put it there first
            if not (target / "govesb").is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def python_push(client: Path, config: dict[str, Any], script: str = "python_push.py") -> Any:
    """What ``script`` (``python_push.py``, ``python_request.py``) printed, run with the
    installed ``govesb`` on its path."""
    done = subprocess.run(
        [sys.executable, str(HERE / script)],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
        env={**os.environ, "PYTHONPATH": str(client)},
    )
    if done.returncode != 0:
        raise AssertionError(f"the Python client failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def node_push(node_modules: Path, config: dict[str, Any]) -> Any:
    """What ``client.cjs`` printed: the Node client's own verdict on the gateway's reply
    (or, with ``config["replies"]``, on each of those)."""
    node = shutil.which("node")
    if node is None:
        raise npm.NodeUnavailable("node is needed for the Node GovESB client")
    done = subprocess.run(
        [node, str(HERE / "client.cjs")],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
        env={**os.environ, "NODE_PATH": str(node_modules)},
    )
    if done.returncode != 0:
        raise AssertionError(f"the Node client failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)
