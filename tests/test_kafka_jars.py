"""Resolving the broker's jars: Java checks, the cache folder's marker, Maven failures.

`java` and `mvn` are small shell scripts on a PATH of the test's own, so no JVM or network.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from moderator.dev.kafka.jars import (
    JARS_ENV,
    KAFKA_VERSION,
    MARKER,
    broker_jars,
    default_jars_dir,
    java_command,
    listed_jars,
    maven_failure,
    parse_java_major,
    pom_text,
)
from moderator.errors import ConfigError

KAFKA_JAR = f"kafka_2.13-{KAFKA_VERSION}.jar"
# A Maven that copies two jars into -DoutputDirectory and counts its runs (Python: the test's
# PATH holds no other tools).
FAKE_MVN = f"""#!{sys.executable}
import sys
from pathlib import Path
here = Path(sys.argv[0]).parent
with (here / "mvn-runs").open("a") as runs:
    runs.write("run\\n")
out = Path(next(a for a in sys.argv if a.startswith("-DoutputDirectory=")).split("=", 1)[1])
out.mkdir(parents=True)
for name in ("{KAFKA_JAR}", "slf4j-api-1.7.36.jar"):
    (out / name).touch()
"""
FAILING_MVN = """#!/bin/sh
echo "[ERROR] Failed to execute goal on project kafka-broker-jars: Could not resolve \
dependencies for project: https://user:hunter2@repo.example/ unreachable -> [Help 1]"
echo "[ERROR] "
echo "[ERROR] [Help 1] http://cwiki.apache.org/confluence/display/MAVEN/x"
exit 1
"""


def _script(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding a Java 17 `java` and nothing else."""
    folder = tmp_path / "bin"
    folder.mkdir()
    _script(folder, "java", "#!/bin/sh\necho 'openjdk version \"17.0.15\" 2025-04-15' >&2\n")
    monkeypatch.setenv("PATH", str(folder))
    return folder


def test_parse_java_major() -> None:
    assert parse_java_major('openjdk version "17.0.15" 2025-04-15') == 17
    assert parse_java_major('java version "21" 2023-09-19 LTS') == 21
    assert parse_java_major('java version "1.8.0_402"') == 8
    assert parse_java_major("no version here") is None


def test_java_missing_or_too_old(tools: Path) -> None:
    assert java_command() == str(tools / "java")
    _script(tools, "java", "#!/bin/sh\necho 'java version \"11.0.2\"' >&2\n")
    with pytest.raises(ConfigError, match=r"is Java 11; the Kafka broker needs Java 17\+"):
        java_command()
    (tools / "java").unlink()
    with pytest.raises(ConfigError, match="java: not found on PATH"):
        java_command()


def test_resolves_once_into_a_marked_folder(tools: Path, tmp_path: Path) -> None:
    _script(tools, "mvn", FAKE_MVN)
    target = tmp_path / "cache" / "kafka"
    assert broker_jars(target) == target
    assert listed_jars(target) == [KAFKA_JAR, "slf4j-api-1.7.36.jar"]
    assert broker_jars(target) == target
    assert (tools / "mvn-runs").read_text().count("run") == 1
    assert [p.name for p in target.parent.iterdir()] == ["kafka"]  # no temporary left


def test_a_folder_missing_a_listed_jar_is_incomplete(tmp_path: Path) -> None:
    (tmp_path / MARKER).write_text(f"{KAFKA_JAR}\nother.jar\n")
    (tmp_path / KAFKA_JAR).touch()
    assert listed_jars(tmp_path) is None
    (tmp_path / "other.jar").touch()
    assert listed_jars(tmp_path) == [KAFKA_JAR, "other.jar"]


def test_half_copied_folder_is_refused_not_used(tools: Path, tmp_path: Path) -> None:
    target = tmp_path / "jars"
    target.mkdir()
    (target / KAFKA_JAR).touch()  # jars, but no list: an interrupted copy
    with pytest.raises(ConfigError, match=f"not a complete Kafka {KAFKA_VERSION} jar folder"):
        broker_jars(target)


def test_maven_missing(tools: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mvn: not found on PATH") as caught:
        broker_jars(tmp_path / "jars")
    assert "\n" not in str(caught.value)


def test_maven_failure_is_one_line_without_passwords(tools: Path, tmp_path: Path) -> None:
    _script(tools, "mvn", FAILING_MVN)
    target = tmp_path / "cache" / "jars"
    with pytest.raises(ConfigError) as caught:
        broker_jars(target)
    message = str(caught.value)
    assert message.startswith(f"mvn: cannot resolve the Kafka {KAFKA_VERSION} jars: Failed to")
    assert "hunter2" not in message and "[Help" not in message and "\n" not in message
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # the temporary folder is gone too


def test_maven_failure_without_error_lines() -> None:
    assert maven_failure("downloading\nsomething odd happened\n\n") == "something odd happened"
    assert maven_failure("") == ""


def test_default_folder_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(JARS_ENV, raising=False)
    assert default_jars_dir() == Path.home() / ".cache" / "moderator" / f"kafka-{KAFKA_VERSION}"
    monkeypatch.setenv(JARS_ENV, str(tmp_path))
    assert default_jars_dir() == tmp_path


def test_pom_pins_the_broker_and_its_logging_backend() -> None:
    text = pom_text()
    assert f"<kafka.version>{KAFKA_VERSION}</kafka.version>" in text
    assert "<artifactId>log4j-slf4j-impl</artifactId>" in text  # slf4j 1.7 binding
    assert "<artifactId>log4j-core</artifactId>" in text
