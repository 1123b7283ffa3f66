"""The image's wheel: built from exactly what ``deploy/Dockerfile`` copies, it installs and runs.

The build stage of the Dockerfile copies some paths of the repository and runs ``pip install .``
there. This test reads those ``COPY`` lines (so the list is written once, in the Dockerfile),
copies the same paths into an empty directory, builds the wheel from it, installs the wheel into
a fresh virtual environment and runs ``govesb --help`` and ``govesb worker --help`` from it, in a
directory outside the checkout. The fresh environment gets the pinned dependencies from the
project's own virtual environment (a ``.pth`` line, added after the install: the same versions
``pip install .`` would fetch), so the test downloads none; the checkout is never on its path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from streams.settings import REPO_ROOT

DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"

pytestmark = pytest.mark.slow


def build_stage_copies(dockerfile: str) -> list[str]:
    """Paths the first stage copies from the build context before it runs ``pip install``."""
    stage = dockerfile.split("\nFROM ", 2)[1]  # the text of the first FROM's stage
    before_install = stage.split("pip install", 1)[0]
    paths: list[str] = []
    for line in before_install.splitlines():
        if match := re.match(r"COPY\s+(?!--from)(.+)\s+\S+$", line.strip()):
            paths += match.group(1).split()
    return paths


def test_the_build_stage_copies_the_project_and_installs_it() -> None:
    copies = build_stage_copies(DOCKERFILE.read_text(encoding="utf-8"))
    assert "pyproject.toml" in copies
    assert "deploy/" not in copies
    assert "tests/" not in copies


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_wheel_from_the_dockerfiles_paths_installs_and_runs(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for path in build_stage_copies(DOCKERFILE.read_text(encoding="utf-8")):
        source = REPO_ROOT / path
        if source.is_dir():
            shutil.copytree(source, context / path, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, context / path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    wheels = tmp_path / "wheels"
    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), "."],
        context,
        env,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("govesb-*.whl")

    fresh = tmp_path / "venv"
    venv.create(fresh, with_pip=False)
    python = fresh / "bin" / "python"
    site = Path(
        run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            tmp_path, env).stdout.strip()
    )  # fmt: skip
    installed = run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet",
         str(wheel)],
        tmp_path,
        env,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # The pinned dependencies, already installed in the project's environment; written after
    # the install, so that pip never sees (or touches) the checkout's editable install.
    (site / "govesb-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    govesb = fresh / "bin" / "govesb"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for command in ([str(govesb), "--help"], [str(govesb), "worker", "--help"]):
        result = run(command, outside, {**env, "COLUMNS": "120"})
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Usage: govesb" in result.stdout
    where = run([str(python), "-c", "import streams; print(streams.__file__)"], outside, env)
    assert str(site) in where.stdout, "the installed wheel, not the checkout, must be imported"
