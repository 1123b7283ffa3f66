"""GovESB's public client libraries, driven unmodified against the gateway.

``package.json`` and ``package-lock.json`` pin the Node client ``govesb-connector-js``;
``push.cjs`` drives it. The Python client ``govesb`` is a pinned dev dependency.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests import npm

HERE = Path(__file__).resolve().parent
RUN_TIMEOUT_S = 60


def install_node_client() -> Path:
    """The ``node_modules`` holding the pinned ``govesb-connector-js``."""
    return npm.install(HERE, "govesb-connector-js", "govesb-connector-js")


def node_push(node_modules: Path, config: dict[str, Any]) -> Any:
    """What ``push.cjs`` printed: the Node client's own verdict on the gateway's reply."""
    node = shutil.which("node")
    if node is None:
        raise npm.NodeUnavailable("node is needed for the Node GovESB client")
    done = subprocess.run(
        [node, str(HERE / "push.cjs")],
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
