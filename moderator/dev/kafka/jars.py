"""The pinned Apache Kafka jars, resolved once from Maven Central into a cache folder.

The folder is complete only when its `jars.txt` lists every jar in it: Maven resolves into a
temporary sibling that is renamed into place after the list is written, so an interrupted
resolution is never mistaken for a usable one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from moderator.errors import ConfigError
from moderator.masking import mask_passwords

KAFKA_VERSION = "4.1.1"
JARS_ENV = "MODERATOR_KAFKA_JARS"
MIN_JAVA = 17
MARKER = "jars.txt"
_MAVEN_TIMEOUT_S = 900.0
_JAVA_TIMEOUT_S = 60.0
_MAX_MESSAGE = 300


def default_jars_dir() -> Path:
    """$MODERATOR_KAFKA_JARS, else ~/.cache/moderator/kafka-<version>."""
    override = os.environ.get(JARS_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "moderator" / f"kafka-{KAFKA_VERSION}"


def parse_java_major(text: str) -> int | None:
    """The major version in `java -version` output ('"17.0.15"' -> 17, '"1.8.0_402"' -> 8)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:
        major = int(match.group(2))
    return major


def java_command() -> str:
    """The path of a `java` on PATH that is new enough for the broker; ConfigError otherwise."""
    java = shutil.which("java")
    if java is None:
        raise ConfigError(f"java: not found on PATH; the Kafka broker needs Java {MIN_JAVA}+")
    try:
        done = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=_JAVA_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"java: {java} -version failed: {type(exc).__name__}") from exc
    major = parse_java_major(done.stderr + done.stdout)
    if major is None:
        raise ConfigError(f"java: cannot read the version of {java} from `java -version`")
    if major < MIN_JAVA:
        raise ConfigError(f"java: {java} is Java {major}; the Kafka broker needs Java {MIN_JAVA}+")
    return java


def listed_jars(folder: Path) -> list[str] | None:
    """The jar names of a complete cache folder, or None when it is missing or incomplete."""
    try:
        names = (folder / MARKER).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None
    if f"kafka_2.13-{KAFKA_VERSION}.jar" not in names:
        return None
    if not all((folder / name).is_file() for name in names):
        return None
    return names


def broker_jars(cache_dir: Path | None = None) -> Path:
    """The folder holding the broker's jars (a classpath of `folder/*`), resolving it with
    Maven on first use. Checks that Java is usable too: the jars are useless without it.

    Raises ConfigError (one line) when java or mvn is missing, Java is too old, or Maven fails.
    """
    java_command()
    return resolve_jars(cache_dir)


def resolve_jars(cache_dir: Path | None = None) -> Path:
    """broker_jars without the Java check."""
    target = cache_dir if cache_dir is not None else default_jars_dir()
    if listed_jars(target) is not None:
        return target
    if target.exists() and any(target.iterdir()):
        raise ConfigError(
            f"{target} is not a complete Kafka {KAFKA_VERSION} jar folder (no {MARKER} listing "
            f"its jars); remove it to resolve the jars again, or point {JARS_ENV} elsewhere"
        )
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ConfigError(
            f"mvn: not found on PATH; Maven resolves the Kafka {KAFKA_VERSION} jars "
            f"(or set {JARS_ENV} to a folder resolved elsewhere)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
        jars = _resolve(mvn, Path(tmp))
        if target.exists():
            target.rmdir()  # empty: checked above
        try:
            jars.rename(target)
        except OSError as exc:
            # Another process may have finished first; its folder is as good as ours.
            if listed_jars(target) is None:
                raise ConfigError(f"{JARS_ENV}: cannot move the jars into {target}: {exc}") from exc
    return target


def _resolve(mvn: str, work: Path) -> Path:
    """Run Maven on the bundled pom inside `work`; the jar folder, its list written last."""
    pom = work / "pom.xml"
    pom.write_text(pom_text(), encoding="utf-8")
    jars = work / "jars"
    command = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={jars}",
        "-DincludeScope=runtime",
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_MAVEN_TIMEOUT_S, cwd=work
        )
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(
            f"mvn: resolving the Kafka jars took over {_MAVEN_TIMEOUT_S:.0f} s"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"mvn: cannot run {mvn}: {exc.strerror or exc}") from exc
    names = sorted(p.name for p in jars.glob("*.jar")) if jars.is_dir() else []
    if done.returncode != 0 or not names:
        reason = maven_failure(done.stdout + "\n" + done.stderr) or f"exit code {done.returncode}"
        raise ConfigError(f"mvn: cannot resolve the Kafka {KAFKA_VERSION} jars: {reason}")
    (jars / MARKER).write_text("\n".join(names) + "\n", encoding="utf-8")
    return jars


def pom_text() -> str:
    """The bundled Maven project that pins the broker's jars (package data)."""
    return resources.files("moderator.dev").joinpath("kafka/pom.xml").read_text(encoding="utf-8")


def maven_failure(output: str) -> str:
    """Maven's reason for a failure, as one short line: its first [ERROR] line with text, else
    its last line with text; passwords in repository URLs are masked."""
    lines = [" ".join(line.split()) for line in mask_passwords(output).splitlines()]
    errors = [line.removeprefix("[ERROR]").strip() for line in lines if line.startswith("[ERROR]")]
    chosen = next((e for e in errors if e), None)
    if chosen is None:
        chosen = next((line for line in reversed(lines) if line), "")
    chosen = chosen.split(" -> [Help")[0].strip()
    return chosen if len(chosen) <= _MAX_MESSAGE else chosen[: _MAX_MESSAGE - 3] + "..."
