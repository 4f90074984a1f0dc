"""`moderator scan s3://bucket/prefix` against the embedded S3 server, through the real store."""

from __future__ import annotations

from pathlib import Path

import pytest

from moderator.cli.main import main
from moderator.dev.samples import make_sample
from moderator.dev.stack import EmbeddedStack
from moderator.errors import ErrorCode
from moderator.events.verdict import Verdict
from moderator.policy.bundled import write_default_policy


@pytest.fixture
def s3_env(stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in stack.env().items():
        if name.startswith(("AWS_", "MODERATOR_S3__")):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("MODERATOR_S3__REGION", stack.region)


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    write_default_policy(d)
    return d


@pytest.mark.usefixtures("s3_env")
def test_scan_an_s3_prefix(
    stack: EmbeddedStack,
    unique: str,
    policies: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bucket = f"scan-{unique}"
    s3 = stack.s3_client()
    s3.create_bucket(Bucket=bucket)
    objects = {
        "batch/a.jpg": make_sample("jpeg", 1).data,
        "batch/sub/b.png": make_sample("png", 2).data,
        "batch/sub/c.gif": make_sample("gif", 3).data,
        "batch/readme.txt": b"not an image",
        "batch/empty-folder/": b"",  # a console's "folder" marker: not an object to judge
        "other/d.jpg": make_sample("jpeg", 4).data,  # outside the prefix
    }
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    out = tmp_path / "verdicts.jsonl"
    argv = [
        "scan",
        f"s3://{bucket}/batch/",
        "--engine",
        "fake",
        "--policies",
        str(policies),
        "--tenant",
        "acme",
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    assert capsys.readouterr().err.splitlines()[-1].startswith("scan: done 4/4, errors 1, ")
    verdicts = [Verdict.model_validate_json(line) for line in out.read_text().splitlines()]
    by_key = {v.object.key: v for v in verdicts}
    assert sorted(by_key) == [
        "batch/a.jpg",
        "batch/readme.txt",
        "batch/sub/b.png",
        "batch/sub/c.gif",
    ]
    assert {v.object.bucket for v in verdicts} == {bucket}
    assert {v.tenant_id for v in verdicts} == {"acme"}
    assert all(v.object.etag for v in verdicts)  # fetched through S3ObjectStore
    readme = by_key["batch/readme.txt"].error
    assert readme is not None
    assert readme.code in {ErrorCode.UNSUPPORTED_FORMAT, ErrorCode.CORRUPT_IMAGE}
    images = [v for k, v in by_key.items() if not k.endswith(".txt")]
    assert all(v.error is None and v.model is not None and v.model.smoke_test for v in images)


@pytest.mark.usefixtures("s3_env")
@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("s3://{bucket}/nothing-here/", "matched no objects"),
        ("s3://{bucket}-gone/x", "no such bucket"),
    ],
)
def test_scan_of_nothing_is_a_usage_error(
    stack: EmbeddedStack,
    unique: str,
    policies: Path,
    capsys: pytest.CaptureFixture[str],
    where: str,
    message: str,
) -> None:
    bucket = f"scan-{unique}"
    stack.s3_client().create_bucket(Bucket=bucket)
    target = where.format(bucket=bucket)
    assert main(["scan", target, "--engine", "fake", "--policies", str(policies)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and message in lines[0] and target in lines[0]
