"""`moderator dev-stack` without servers: help texts, the env file, the stderr guide, the upload
event, and the usage errors that must stop it before anything starts."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from moderator.dev.envfile import env_file_text, export_lines, remove_env_file, write_env_file
from moderator.dev.guide import guide
from moderator.dev.kafka.process import free_ports
from moderator.dev.uploads import upload_event
from moderator.errors import ConfigError

ENV = {
    "MODERATOR_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1234",
    "MODERATOR_KAFKA__DELIVERY": "at_least_once",
    "MODERATOR_S3__ENDPOINT_URL": "http://127.0.0.1:5678",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "it's a test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
TOPICS = {
    "uploads": 4,
    "moderation.verdicts": 4,
    "moderation.audit": 4,
    "moderation.dlq": 4,
    "moderation.replay": 4,
}


def _moderator(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moderator.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _without_stack_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MODERATOR_KAFKA__", "MODERATOR_S3__"))
    }


@pytest.mark.parametrize(
    "command", [("dev-stack",), ("dev-stack", "upload"), ("dev-stack", "verdicts")]
)
def test_help_has_a_description_and_examples(command: tuple[str, ...]) -> None:
    done = _moderator(*command, "--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    description = text.split("\n\n", 2)[1]  # after the usage paragraph
    assert len(description.split()) > 20, text
    assert "\nexamples:\n" in text, text
    examples = text.split("\nexamples:\n", 1)[1].splitlines()
    assert any(line.strip().startswith(f"moderator {' '.join(command)}") for line in examples)


def test_export_lines_round_trip_through_a_shell() -> None:
    lines = export_lines(ENV)
    assert [line.split("=", 1)[0] for line in lines] == [f"export {k}" for k in ENV]
    parsed = dict(shlex.split(line)[1].split("=", 1) for line in lines)
    assert parsed == ENV


def test_env_file_is_written_aside_then_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / ".dev-stack.env"
    text = env_file_text(ENV, pid=42)
    seen: list[tuple[bool, str]] = []
    real_replace = Path.replace

    def spy(self: Path, destination: Path) -> Path:
        # At the rename the target is not there yet and the source holds the whole text.
        seen.append((Path(destination).exists(), self.read_text()))
        return real_replace(self, destination)

    monkeypatch.setattr(Path, "replace", spy)
    write_env_file(target, text)
    assert seen == [(False, text)]
    assert target.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dev-stack.env"]  # no temp file left
    assert text.startswith("# moderator dev-stack (pid 42)")
    assert text.splitlines()[1:] == export_lines(ENV)


def test_env_file_is_removed_only_while_it_is_ours(tmp_path: Path) -> None:
    target = tmp_path / "stack.env"
    ours = env_file_text(ENV, pid=1)
    write_env_file(target, ours)
    remove_env_file(target, env_file_text(ENV, pid=2))  # another stack replaced it
    assert target.exists()
    remove_env_file(target, ours)
    assert not target.exists()
    remove_env_file(target, ours)  # gone already: nothing to do


def test_guide_names_bucket_topics_and_commands() -> None:
    text = guide("mock", ENV, ("uploads",), TOPICS, env_file=Path(".dev-stack.env"))
    assert "bucket uploads" in text
    assert (
        "uploads, moderation.verdicts, moderation.audit, moderation.dlq, moderation.replay" in text
    )
    assert "(4 partitions each)" in text
    assert ". ./.dev-stack.env" in text  # `. name` would search PATH
    assert "moderator dev-stack upload photo.jpg --tenant kids" in text
    assert 'moderator dev-stack verdicts "$id"' in text
    assert "127.0.0.1:1234" in text and "http://127.0.0.1:5678" in text
    without = guide("mock", ENV, ("uploads",), {"a": 12, "b": 3}, env_file=None)
    assert "a (12 partitions), b (3 partitions)" in without
    assert "paste the export lines" in without


def test_upload_event_is_validated() -> None:
    event = upload_event(
        tenant="kids",
        bucket="uploads",
        key="kids/photo.jpg",
        size=10,
        content_type="image/jpeg",
        version_id="v1",
        surface="profile",
    )
    assert event.event_id.startswith("dev-") and len(event.event_id) == 36
    assert event.output_key == "kids:uploads/kids/photo.jpg"
    assert event.surface == "profile" and event.object.version_id == "v1"


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"tenant": "Not A Tenant"}, "--tenant: 'Not A Tenant' is not a tenant id: lowercase "),
        ({"surface": "s" * 65}, f"--surface: '{'s' * 65}': String should have at most 64"),
        ({"bucket": ""}, "--bucket: '': String should have at least 1 character"),
    ],
)
def test_upload_event_names_the_flag_behind_a_bad_field(fields: dict[str, str], says: str) -> None:
    event: dict[str, Any] = {"tenant": "kids", "bucket": "uploads", "key": "k", "surface": None}
    with pytest.raises(ConfigError) as raised:
        upload_event(**{**event, **fields}, size=1, content_type=None, version_id=None)
    assert str(raised.value).startswith(says), raised.value


def test_upload_without_the_stack_environment_is_a_usage_error(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"not needed")
    done = _moderator(
        "dev-stack", "upload", str(photo), "--tenant", "kids", env=_without_stack_env()
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert (
        "MODERATOR_KAFKA__BOOTSTRAP_SERVERS and MODERATOR_S3__ENDPOINT_URL not set" in done.stderr
    )


def test_verdicts_timeout_must_be_positive() -> None:
    done = _moderator("dev-stack", "verdicts", "--timeout", "0", env={**os.environ, **ENV})
    assert done.returncode == 2
    assert "--timeout must be above 0" in done.stderr


def test_env_file_in_a_missing_folder_stops_before_starting(tmp_path: Path) -> None:
    done = _moderator("dev-stack", "--env-file", str(tmp_path / "nowhere" / "x.env"))
    assert done.returncode == 2
    assert done.stdout == ""  # no export lines, no `ready`: nothing was started
    assert (
        done.stderr == f"moderator: dev-stack: --env-file: {tmp_path / 'nowhere'} is not a folder\n"
    )


def test_env_file_that_is_a_folder_stops_before_starting(tmp_path: Path) -> None:
    done = _moderator("dev-stack", "--env-file", str(tmp_path))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"moderator: dev-stack: --env-file: {tmp_path} is a folder\n"


@pytest.mark.parametrize("tenant", ["Bad!", "", "_x", "a" * 64])
def test_upload_with_a_bad_tenant_is_a_usage_error_naming_the_flag(
    tmp_path: Path, tenant: str
) -> None:
    done = _moderator("dev-stack", "upload", "--tenant", tenant, env={**os.environ, **ENV})
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"moderator dev-stack upload: error: argument --tenant: {tenant!r} is not a tenant id: "
        "lowercase letters, digits, '_' and '-', starting with a letter or digit, at most 63 "
        "characters (see moderator dev-stack upload --help)\n"
    )


def test_upload_with_an_empty_key_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from moderator.cli.main import main

    with pytest.raises(SystemExit) as stopped:
        main(["dev-stack", "upload", "--key", " "])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        "moderator dev-stack upload: error: argument --key: an object key must not be empty "
        "(see moderator dev-stack upload --help)\n"
    )


def test_module_entry_point_reports_usage_errors_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from moderator.cli.devstack import main

    with pytest.raises(SystemExit) as stopped:
        main(["--bogus"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        "moderator dev-stack: error: unrecognized arguments: --bogus "
        "(see moderator dev-stack --help)\n"
    )


def test_upload_help_lists_every_shape() -> None:
    done = _moderator("dev-stack", "upload", "--help")
    assert done.returncode == 0, done.stderr
    assert "--shape native|s3|eventbridge|sns-s3|sns-eventbridge|sns-native" in done.stdout


def test_upload_with_an_unknown_shape_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from moderator.cli.main import main

    with pytest.raises(SystemExit) as stopped:
        main(["dev-stack", "upload", "--tenant", "kids", "--shape", "sqs"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        "moderator dev-stack upload: error: argument --shape: invalid choice: 'sqs' (choose from "
        "'native', 's3', 'eventbridge', 'sns-s3', 'sns-eventbridge', 'sns-native') "
        "(see moderator dev-stack upload --help)\n"
    )


def test_upload_passes_the_shape_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from moderator.cli import devstack
    from moderator.cli.main import build_parser

    seen: dict[str, Any] = {}
    monkeypatch.setattr(devstack, "cmd_upload", lambda file, **kw: seen.update(kw) or 0)
    for argv, shape in ((["--shape", "sns-eventbridge"], "sns-eventbridge"), ([], "native")):
        args = build_parser().parse_args(["dev-stack", "upload", "--tenant", "kids", *argv])
        assert devstack.run_dev_stack(args) == 0
        assert seen["shape"] == shape


def test_upload_with_a_surface_on_a_store_shape_is_one_line_exit_2(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"not sent")
    args = ("--tenant", "kids", "--shape", "s3", "--surface", "profile")
    done = _moderator("dev-stack", "upload", str(photo), *args, env={**os.environ, **ENV})
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "moderator: dev-stack upload: --surface: --shape s3 carries no surface (native and "
        "sns-native do); the service judges its event under the surface 'default'\n"
    )


def _listening() -> socket.socket:
    """A socket listening on a free loopback port: that port is taken while it is open."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


@pytest.mark.parametrize(
    ("flags", "option"),
    [(("--s3-port",), "--s3-port"), (("--kafka", "apache", "--kafka-port"), "--kafka-port")],
)
def test_a_taken_port_is_one_line_before_anything_starts(
    flags: tuple[str, ...], option: str
) -> None:
    with _listening() as taken:
        port = taken.getsockname()[1]
        done = _moderator("dev-stack", *flags, str(port))
    assert (done.returncode, done.stdout) == (2, "")  # no export lines, no `ready`
    assert done.stderr == (
        f"moderator: dev-stack: {option}: cannot listen on 127.0.0.1:{port}: the port is in use "
        "(choose another port, or 0 for a free one)\n"
    )


def test_kafka_port_with_the_mock_broker_is_refused_in_one_line() -> None:
    done = _moderator("dev-stack", "--kafka-port", "9092")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "moderator: dev-stack: --kafka-port 9092: librdkafka's mock cluster listens on a port "
        "the system picks and has no setting for it (leave it out, or pin a real broker's port "
        "with --kafka apache)\n"
    )


@pytest.mark.parametrize("value", ["65536", "-1", "http"])
def test_a_port_out_of_range_is_a_usage_error(value: str) -> None:
    done = _moderator("dev-stack", "--s3-port", value)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"moderator dev-stack: error: argument --s3-port: {value!r} is not a port "
        "(0 to 65535; 0: a free one) (see moderator dev-stack --help)\n"
    )


def test_the_same_port_for_both_servers_is_refused() -> None:
    done = _moderator("dev-stack", "--kafka", "apache", "--kafka-port", "1", "--s3-port", "1")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "moderator: dev-stack: --kafka-port and --s3-port both name port 1\n"


def test_the_real_brokers_client_port_can_be_pinned() -> None:
    with _listening() as held:
        port = held.getsockname()[1]
    (node,) = free_ports(1, client_port=port)
    assert node.client == port and node.controller not in (0, port)
    with _listening() as taken, pytest.raises(OSError):
        free_ports(1, client_port=taken.getsockname()[1])
