"""`moderator scan` on local folders with the fake engine, and its parts: store, walk, bound."""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from moderator.cli.main import main
from moderator.emit.records import OutRecord
from moderator.errors import ErrorCode, ProcessingError
from moderator.events.verdict import Assessment, Verdict
from moderator.fetch import local as local_mod
from moderator.fetch.local import LOCAL_BUCKET, LocalFileStore
from moderator.pipeline.job import Job
from moderator.pipeline.progress import LOG_EVERY_S, Counts, Progress
from moderator.pipeline.scan import OperatorPolicy, Scan, max_in_flight
from moderator.pipeline.scan_sources import Item, open_source
from moderator.policy.bundled import write_default_policy
from moderator.policy.registry import PolicyRegistry
from moderator.settings import TenancySettings, load_settings

FAKE = ["--engine", "fake"]


def _image(path: Path, fmt: str, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), color).save(path, fmt)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    _image(root / "a.png", "PNG", (200, 10, 10))
    _image(root / "b.jpg", "JPEG", (10, 200, 10))
    _image(root / "nested" / "c.jpg", "JPEG", (10, 10, 200))
    _image(root / "nested" / "deeper" / "d.png", "PNG", (90, 90, 90))
    _image(root / ".hidden.png", "PNG", (1, 2, 3))
    _image(root / ".cache" / "e.png", "PNG", (4, 5, 6))
    (root / "notes.txt").write_text("not an image\n")
    return root


def _expected_keys(root: Path) -> list[str]:
    rel = ["a.png", "b.jpg", "nested/c.jpg", "nested/deeper/d.png", "notes.txt"]
    return [str(root / r) for r in rel]


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    write_default_policy(d)
    (d / "acme.yaml").write_text("on_error: block\n")
    return d


def _verdicts(text: str) -> list[Verdict]:
    return [Verdict.model_validate_json(line) for line in text.splitlines()]


def test_scan_folder_writes_one_verdict_per_file(
    folder: Path, policies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "verdicts.jsonl"
    argv = ["scan", str(folder), *FAKE, "--policies", str(policies), "--output", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[-1].startswith("scan: done 5/5, errors 1, ")
    assert "SMOKE-TEST model (fake: fake): verdicts are not meaningful" in captured.err
    lines = out.read_text().splitlines()
    assert all(json.loads(line)["schema"] == "moderator.verdict/v1" for line in lines)
    verdicts = _verdicts(out.read_text())
    assert sorted(v.object.key for v in verdicts) == sorted(_expected_keys(folder))
    by_key = {v.object.key: v for v in verdicts}
    for v in verdicts:
        assert v.object.bucket == ""
        assert v.tenant_id == "default" and v.policy.tenant_id == "default"
        assert v.event_id.startswith("scan-")
    notes = by_key[str(folder / "notes.txt")]
    assert notes.error is not None
    assert notes.error.code in {ErrorCode.UNSUPPORTED_FORMAT, ErrorCode.CORRUPT_IMAGE}
    assert notes.decision == "review" and notes.assessment is None
    images = [v for k, v in by_key.items() if not k.endswith(".txt")]
    for v in images:
        assert v.error is None and v.assessment is not None
        assert v.model is not None and v.model.smoke_test and v.model.engine == "fake"
    assert {v.object.format for v in images} == {"PNG", "JPEG"}


def test_scan_writes_to_stdout_and_event_ids_are_stable(
    folder: Path, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan", str(folder), *FAKE, "--policies", str(policies)]) == 0
    first = _verdicts(capsys.readouterr().out)
    assert len(first) == 5
    assert main(["scan", str(folder), *FAKE, "--policies", str(policies)]) == 0
    second = _verdicts(capsys.readouterr().out)
    assert {v.event_id for v in first} == {v.event_id for v in second}


def test_scan_single_file_keeps_the_path_as_given(
    folder: Path, policies: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    monkeypatch.chdir(folder.parent)
    assert main(["scan", "photos/nested/c.jpg", *FAKE, "--policies", str(policies)]) == 0
    (verdict,) = _verdicts(capsys.readouterr().out)
    assert verdict.object.key == "photos/nested/c.jpg" and verdict.object.bucket == ""


def test_scan_skips_its_own_output_file(
    folder: Path, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = folder / "nested" / "out.jsonl"
    argv = ["scan", str(folder), *FAKE, "--policies", str(policies), "--output", str(out)]
    assert main(argv) == 0
    keys = [v.object.key for v in _verdicts(out.read_text())]
    assert sorted(keys) == sorted(_expected_keys(folder))


def test_tenant_with_a_policy_file_is_used(
    folder: Path, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan", str(folder), *FAKE, "--policies", str(policies)]) == 0
    default_version = _verdicts(capsys.readouterr().out)[0].policy.version
    argv = ["scan", str(folder), *FAKE, "--policies", str(policies), "--tenant", "acme"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "no policy file" not in captured.err
    verdicts = _verdicts(captured.out)
    assert {v.tenant_id for v in verdicts} == {"acme"}
    assert {v.policy.tenant_id for v in verdicts} == {"acme"}
    assert {v.policy.version for v in verdicts} != {default_version}
    notes = next(v for v in verdicts if v.object.key.endswith("notes.txt"))
    assert notes.decision == "block"  # acme.yaml says on_error: block


def test_unknown_tenant_gets_the_default_policy(
    folder: Path, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["scan", str(folder), *FAKE, "--policies", str(policies), "--tenant", "globex"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "tenant 'globex' has no policy file; using the default policy" in captured.err
    verdicts = _verdicts(captured.out)
    assert len(verdicts) == 5 and {v.tenant_id for v in verdicts} == {"globex"}
    assert all(v.error is None or v.error.code != ErrorCode.UNKNOWN_TENANT for v in verdicts)
    assert all(v.error is None or v.error.code != ErrorCode.TENANT_MISMATCH for v in verdicts)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: [str(root / "missing")], "scan: no such file or directory: "),
        (lambda root: [str(root / "empty")], "holds no files"),
        (lambda root: [str(root / "photos"), "--tenant", "Not_OK"], "invalid tenant id"),
        (lambda root: ["s3://"], "s3://bucket/prefix"),
        (lambda root: [str(root / "photos"), "--output", str(root)], "cannot write"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    folder: Path,
    policies: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], list[str]],
    message: str,
) -> None:
    (folder.parent / "empty" / ".only-hidden").mkdir(parents=True)
    argv = ["scan", *make(folder.parent), *FAKE, "--policies", str(policies)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [line for line in captured.err.splitlines() if "SMOKE-TEST" not in line]
    assert len(lines) == 1 and message in lines[0]


def test_a_folder_that_cannot_be_read_is_named_and_exits_1(
    folder: Path,
    policies: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moderator.pipeline import scan_sources

    locked = folder / "nested" / "deeper"
    listing = scan_sources._entries

    def entries(path: str) -> list[os.DirEntry[str]]:  # root reads any folder: deny this one
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied")
        return listing(path)

    monkeypatch.setattr(scan_sources, "_entries", entries)
    assert main(["scan", str(folder), *FAKE, "--policies", str(policies)]) == 1
    captured = capsys.readouterr()
    assert len(_verdicts(captured.out)) == 4  # a, b, c and notes.txt; not d, inside it
    err = [
        line
        for line in captured.err.splitlines()
        if "SMOKE-TEST" not in line and not line.startswith("  ")  # the summary table
    ]
    assert err[0] == f"scan: skipped {str(locked)!r}: cannot be read: Permission denied"
    assert err[1].startswith("scan: done 4/5, ") and err[1].endswith(", 1 not scanned")
    assert err[2] == "moderator: scan: 1 object(s) got no verdict (see above)"


def test_a_path_that_cannot_be_a_key_is_named_and_exits_1(
    folder: Path, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / os.fsdecode(b"bad-\xff.png")).write_bytes(b"x")  # not valid UTF-8
    assert main(["scan", str(folder), *FAKE, "--policies", str(policies)]) == 1
    captured = capsys.readouterr()
    assert len(_verdicts(captured.out)) == 5  # the others still got their verdicts
    err = [
        line
        for line in captured.err.splitlines()
        if "SMOKE-TEST" not in line and not line.startswith("  ")  # the summary table
    ]
    assert "not valid UTF-8" in err[0] and "bad-" in err[0]
    assert err[1].startswith("scan: done 5/6, ") and err[1].endswith(", 1 not scanned")
    assert err[2] == "moderator: scan: 1 object(s) got no verdict (see above)"


def test_help_mentions_hidden_files(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["scan", "--help"])
    assert "hidden" in capsys.readouterr().out


def test_walk_is_sorted_and_skips_hidden(folder: Path, policies: Path) -> None:
    settings = load_settings(None, {"policies.dir": policies})
    source = open_source(str(folder) + "/", settings, exclude=None)
    keys = [item.key for item in source.items]
    assert keys == _expected_keys(folder)
    assert all(item.bucket == LOCAL_BUCKET for item in source.items)


# -- LocalFileStore ------------------------------------------------------------------------------


def test_local_store_reads_and_maps_errors(tmp_path: Path) -> None:
    store = LocalFileStore()
    f = tmp_path / "x.bin"
    f.write_bytes(b"12345")
    got = store.get(LOCAL_BUCKET, str(f), None, 5)
    assert got.data == b"12345" and got.etag is None

    def code(bucket: str, key: str, max_bytes: int = 100) -> ErrorCode:
        with pytest.raises(ProcessingError) as info:
            store.get(bucket, key, None, max_bytes)
        return info.value.code

    assert code(LOCAL_BUCKET, str(f), max_bytes=4) == ErrorCode.OBJECT_TOO_LARGE
    assert code(LOCAL_BUCKET, str(tmp_path / "missing")) == ErrorCode.OBJECT_NOT_FOUND
    assert code(LOCAL_BUCKET, str(f / "below-a-file")) == ErrorCode.OBJECT_NOT_FOUND
    assert code(LOCAL_BUCKET, str(tmp_path)) == ErrorCode.OBJECT_NOT_FOUND
    assert code("uploads", str(f)) == ErrorCode.OBJECT_NOT_FOUND
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert code(LOCAL_BUCKET, str(fifo)) == ErrorCode.OBJECT_NOT_FOUND  # and does not block


def test_local_store_access_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(path: str, flags: int) -> int:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(local_mod.os, "open", denied)  # file modes do not stop root
    with pytest.raises(ProcessingError) as info:
        LocalFileStore().get(LOCAL_BUCKET, str(tmp_path / "secret.png"), None, 100)
    assert info.value.code == ErrorCode.ACCESS_DENIED


# -- policy wrapper ------------------------------------------------------------------------------


def test_operator_policy_drops_isolation_only(policies: Path) -> None:
    provider = PolicyRegistry(policies, TenancySettings(upload_buckets=("uploads",)))
    inner = provider.resolve("acme", "default")
    assert inner is not None
    assert not inner.allows_object(LOCAL_BUCKET, "/tmp/x.png")
    wrapped = OperatorPolicy(inner)
    assert wrapped.allows_object(LOCAL_BUCKET, "/tmp/x.png")
    assert wrapped.allows_object("other-bucket", "globex/y.png")
    for name in ("tenant_id", "surface", "version", "full_hash", "prompt", "prompt_sha256"):
        assert getattr(wrapped, name) == getattr(inner, name)
    assert wrapped.categories == inner.categories
    unsafe = Assessment(rating="Unsafe", category="O4: Nudity Content")
    assert wrapped.decide(unsafe) == inner.decide(unsafe)
    assert wrapped.on_error(ErrorCode.CORRUPT_IMAGE) == "block"


# -- the in-flight bound and the output stream ---------------------------------------------------


class _StubProcessor:
    """Completes each job from another thread, after the test lets it; tracks what is pending."""

    def __init__(self, verdict: bytes) -> None:
        self.pending: list[tuple[Job, Callable[[list[OutRecord]], None]]] = []
        self.peak = 0
        self._verdict = verdict
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._drain, daemon=True)
        self._worker.start()

    def submit(self, job: Job, done: Callable[[list[OutRecord]], None]) -> None:
        with self._lock:
            self.pending.append((job, done))
            self.peak = max(self.peak, len(self.pending))

    def _drain(self) -> None:
        while not self._stop.wait(0.002):
            with self._lock:
                batch, self.pending = self.pending, []
            for _job, done in batch:
                done([OutRecord("audit", None, b"{}", []), OutRecord("v", None, self._verdict, [])])

    def close(self) -> None:
        self._stop.set()
        self._worker.join()


VERDICT_DOC = {"object": {"bucket": LOCAL_BUCKET, "key": "k"}, "error": None}


def _stub_scan(out: io.StringIO, max_in_flight: int) -> tuple[Scan, _StubProcessor]:
    processor = _StubProcessor(json.dumps(VERDICT_DOC).encode())
    scan = Scan(
        processor,  # type: ignore[arg-type]  # duck-typed stand-in for Processor
        out,
        tenant_id="default",
        local=True,
        verdicts_topic="v",
        max_in_flight=max_in_flight,
    )
    return scan, processor


def _run_stub(out: io.StringIO, n: int, max_in_flight: int) -> tuple[Scan, _StubProcessor]:
    scan, processor = _stub_scan(out, max_in_flight)
    items = (Item(LOCAL_BUCKET, f"f{i:03d}.png", 10) for i in range(n))
    try:
        scan.run(items, Progress(io.StringIO()))
    finally:
        processor.close()
    return scan, processor


def test_in_flight_is_bounded_and_every_verdict_is_written() -> None:
    out = io.StringIO()
    scan, processor = _run_stub(out, 200, max_in_flight=5)
    assert processor.peak <= 5
    lines = out.getvalue().splitlines()
    assert len(lines) == 200
    assert json.loads(lines[0]) == {"object": {"bucket": "", "key": "k"}, "error": None}
    assert scan.counts() == Counts(total=200, done=200, errors=0, skipped=0)
    assert scan.fatal is None


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (BrokenPipeError(32, "Broken pipe"), "the output was closed before every verdict was"),
        (OSError(28, "No space left on device"), "cannot write the output: OSError: [Errno 28]"),
    ],
)
def test_a_failing_output_stops_the_scan_and_blames_no_object(error: OSError, says: str) -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise error

    scan, _ = _run_stub(Broken(), 50, max_in_flight=4)
    assert scan.fatal is not None and scan.fatal.startswith(says), scan.fatal
    assert ".png" not in scan.fatal  # the output failed, not an object
    assert scan.output_closed == isinstance(error, BrokenPipeError)
    assert scan.counts().done == 0
    assert scan.counts().total < 50  # no more submissions once the output failed


def test_max_in_flight_follows_the_engine_and_fetch_settings() -> None:
    settings = load_settings(
        None, {"engine.batch_size": 4, "engine.concurrency": 2, "fetch.concurrency": 3}
    )
    assert max_in_flight(settings) == 2 * 4 * 2 + 3


# -- progress ------------------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_redraws_in_place() -> None:
    stream = _Tty()
    progress = Progress(stream)
    counts = Counts(total=10, done=4, errors=1, skipped=0)
    progress._next = 0.0
    progress.tick(counts, listing=True)
    progress.note("scan: a note")
    progress.finish(Counts(total=10, done=10, errors=1, skipped=0))
    text = stream.getvalue()
    assert text.startswith("\rscan: done 4/10+, errors 1, ")
    assert "\r\x1b[Kscan: a note\n" in text
    assert "\rscan: done 10/10, errors 1, " in text and text.endswith("s\x1b[K\n")


def test_progress_in_a_log_is_one_line_each() -> None:
    stream = io.StringIO()
    progress = Progress(stream)
    assert progress.every_s == LOG_EVERY_S
    progress.tick(Counts(3, 1, 0, 0), listing=True)  # too soon: nothing
    progress._next = 0.0
    progress.tick(Counts(3, 1, 0, 0), listing=False)
    progress.finish(Counts(3, 2, 0, 1))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()
    assert lines[0].startswith("scan: done 1/3, errors 0, ")
    assert lines[1].startswith("scan: done 2/3, errors 0, ") and lines[1].endswith(
        ", 1 not scanned"
    )


def test_ctrl_c_prints_the_summary_and_no_line_follows_the_count() -> None:
    out, shown = io.StringIO(), io.StringIO()
    scan, processor = _stub_scan(out, 64)

    def items() -> Any:  # Ctrl-C while listing, with verdicts still in flight
        for i in range(40):
            yield Item(LOCAL_BUCKET, f"f{i:03d}.png", 10)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan.run(items(), Progress(shown))
    counted = scan.counts().done
    processor.close()  # the worker finishes what was pending: none of it may be written now
    assert len(out.getvalue().splitlines()) == counted == scan.counts().done
    assert f"scan: done {counted}/40" in shown.getvalue()  # the summary's status line
