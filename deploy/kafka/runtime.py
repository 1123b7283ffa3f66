"""The pinned Kafka and Apicurio runtimes: checks for Java and Maven, download once, cache.

The versions live in ``deploy/kafka/pom.xml`` and ``deploy/kafka/apicurio/pom.xml``. Maven
fetches them from Maven Central into the project's own local repository under the
git-ignored cache (``.cache/m2``), then the jars are copied / unpacked next to it.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_CACHE = REPO / ".cache"
KAFKA_POM = HERE / "pom.xml"
APICURIO_POM = HERE / "apicurio" / "pom.xml"
APICURIO_ARTIFACT = "io.apicurio:apicurio-registry-app"
MIN_JAVA = 17

Say = Callable[[str], None]


class LauncherError(RuntimeError):
    """Something the user must fix: a missing tool, a failed download, a process that died."""


def stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def require_java() -> str:
    """Return the path of a Java >= 17 ``java`` or raise a clear error."""
    java = shutil.which("java")
    if java is None:
        raise LauncherError(
            f"Java not found on PATH: GovESB's local broker and registry need Java {MIN_JAVA}+ "
            "(Debian: apt-get install openjdk-17-jre-headless)."
        )
    probe = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', probe.stderr + probe.stdout)
    if match is None:
        raise LauncherError(f"could not read the version of {java}: {probe.stderr.strip()}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_x" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise LauncherError(f"{java} is Java {major}; GovESB needs Java {MIN_JAVA} or newer.")
    return java


def require_maven() -> str:
    """Return the path of ``mvn`` or raise a clear error."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LauncherError(
            "Maven (mvn) not found on PATH: it downloads the pinned Kafka and Apicurio jars "
            "from Maven Central once (Debian: apt-get install maven)."
        )
    return mvn


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()[:12]


def _pom_property(pom: Path, name: str) -> str:
    match = re.search(rf"<{re.escape(name)}>([^<]+)</{re.escape(name)}>", pom.read_text())
    if match is None:
        raise LauncherError(f"{pom} does not pin <{name}>")
    return match.group(1)


def _maven(pom: Path, goal_args: list[str], repo: Path, what: str, say: Say) -> None:
    """Run one Maven goal against ``pom`` with the project's own local repository ``repo``."""
    mvn = require_maven()
    say(f"fetching {what} from Maven Central (once; later runs reuse {repo.parent}) ...")
    started = time.monotonic()
    result = subprocess.run(
        [mvn, "-B", "-ntp", "-q", "-f", str(pom), f"-Dmaven.repo.local={repo}", *goal_args],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).splitlines()
        errors = [line for line in output if "[ERROR]" in line][:5] or output[-10:]
        raise LauncherError(
            f"downloading {what} failed (mvn exit {result.returncode}); is Maven Central "
            "reachable?\n  " + "\n  ".join(errors)
        )
    say(f"fetched {what} in {time.monotonic() - started:.1f}s")


@dataclass(frozen=True)
class Runtime:
    """Where the cached runtimes are."""

    kafka_lib: Path
    kafka_version: str
    apicurio_jar: Path
    apicurio_version: str


def _cached(directory: Path, fill: Callable[[Path], None]) -> Path:
    """Fill ``directory`` once; a partial fill from an interrupted run is thrown away."""
    marker = directory / ".complete"
    if marker.exists():
        return directory
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        fill(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    (partial / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z\n"))
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return directory


def fetch_runtime(cache: Path = DEFAULT_CACHE, say: Say = stderr) -> Runtime:
    """Download (once) and return the pinned Kafka jars and the unpacked Apicurio app.

    The cache directories are named after a digest of their POM, so changing a pinned version
    fetches the new one and never mixes jars of two versions.
    """
    cache = cache.resolve()
    kafka_version = _pom_property(KAFKA_POM, "kafka.version")
    apicurio_version = _pom_property(APICURIO_POM, "apicurio.version")

    repo = cache / "m2"
    kafka_dir = cache / f"kafka-{kafka_version}-{_pom_digest(KAFKA_POM)}"
    _cached(
        kafka_dir,
        lambda out: _maven(
            KAFKA_POM,
            [
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={out}/lib",
            ],
            repo,
            f"Apache Kafka {kafka_version} jars (~55 MB)",
            say,
        ),
    )

    def fill_apicurio(out: Path) -> None:
        coordinates = f"{APICURIO_ARTIFACT}:{apicurio_version}:tar.gz:all"
        _maven(
            APICURIO_POM,
            ["dependency:get", f"-Dartifact={coordinates}", "-Dtransitive=false"],
            repo,
            f"Apicurio Registry {apicurio_version} (~110 MB)",
            say,
        )
        group, artifact = APICURIO_ARTIFACT.split(":")
        archive = (
            repo.joinpath(*group.split("."), artifact, apicurio_version)
            / f"{artifact}-{apicurio_version}-all.tar.gz"
        )
        with tarfile.open(archive) as tar:
            tar.extractall(out / "app", filter="data")

    apicurio_dir = cache / f"apicurio-{apicurio_version}-{_pom_digest(APICURIO_POM)}"
    _cached(apicurio_dir, fill_apicurio)
    jars = sorted((apicurio_dir / "app").glob("*-runner.jar")) or sorted(
        (apicurio_dir / "app").glob("quarkus-run.jar")
    )
    if not jars:
        raise LauncherError(f"no runnable jar in {apicurio_dir / 'app'}; delete it and retry")
    return Runtime(kafka_dir / "lib", kafka_version, jars[0], apicurio_version)
