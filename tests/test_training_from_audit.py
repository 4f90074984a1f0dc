"""`moderator dataset from-audit`: audited decisions from a SQLite audit store, images from
moto's S3 server by version, into the dataset format; reviewer labels; every skipped row listed
with its reason."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from moderator.audit.db.store import AuditStore
from moderator.audit.read.filters import build_query
from moderator.cli.main import main
from moderator.errors import ConfigError
from moderator.fetch.decode import DecodeLimits
from moderator.fetch.s3 import S3ObjectStore, build_s3_client
from moderator.settings import FetchSettings, S3Settings
from moderator.training.dataset import read_dataset
from moderator.training.from_audit import (
    Exported,
    Exporter,
    ExportOptions,
    ExportProgress,
    Skip,
    export,
    finish_line,
    query_rows,
    read_labels,
    skip_kinds,
    skipped_line,
    write_export,
)
from tests.audit_fixtures import ALPHA, BASE, BETA, fill, policy, record
from tests.moto_s3 import moto_s3

BUCKET = "training-export"
O1 = "O1: Hate, Humiliation, Harassment"
O4 = "O4: Nudity Content"
NA = "NA: None applying"


@pytest.fixture(scope="module")
def s3_settings() -> Iterator[S3Settings]:
    with moto_s3() as endpoint:
        settings = S3Settings(
            endpoint_url=endpoint, region="us-east-1", addressing_style="path", max_attempts=1
        )
        client = build_s3_client(settings)
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield settings


def png(n: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), (n * 30 % 256, 90, 200)).save(buffer, "PNG")
    return buffer.getvalue()


_CLIENTS: dict[str, Any] = {}


def put(settings: S3Settings, key: str, data: bytes) -> str:
    url = str(settings.endpoint_url)
    if url not in _CLIENTS:
        _CLIENTS[url] = build_s3_client(settings)
    client = _CLIENTS[url]
    return str(client.put_object(Bucket=BUCKET, Key=key, Body=data)["VersionId"])


def audited(
    event_id: str,
    tenant: str,
    minute: int,
    *,
    data: bytes | None,
    version: str | None,
    key: str,
    **extra: Any,
) -> dict[str, Any]:
    doc = record(event_id, tenant, BASE + timedelta(minutes=minute), key=key, **extra)
    obj = doc["verdict"]["object"]
    obj["bucket"] = BUCKET
    obj["version_id"] = version
    obj["sha256"] = hashlib.sha256(data).hexdigest() if data is not None else None
    return doc


@pytest.fixture
def store(tmp_path: Path, s3_settings: S3Settings) -> Iterator[AuditStore]:
    """Alpha: an O4 block, an allow, an error verdict, an image replaced since (read by its
    version), a smoke-test answer, an Unsafe/NA answer, a missing object, an object overwritten
    in an unversioned way (its SHA-256 differs); beta: one allow."""
    prefix = tmp_path.name  # keys of their own per test, in the module's bucket
    first, second = png(1), png(2)
    v1 = put(s3_settings, f"{prefix}/a/replaced.png", first)
    put(s3_settings, f"{prefix}/a/replaced.png", png(3))  # the current version differs
    docs = []
    specs: list[tuple[str, str, bytes | None, dict[str, Any]]] = [
        ("a-block", ALPHA, first, {"decision": "block", "category": O4, "score": 0.9}),
        ("a-allow", ALPHA, second, {}),
        ("a-error", ALPHA, png(4), {"error": "engine_timeout", "category": None}),
        ("a-smoke", ALPHA, png(5), {"decision": "block", "category": O1}),
        ("a-na", ALPHA, png(6), {"decision": "review", "category": NA}),
        ("a-gone", ALPHA, None, {}),
        ("a-changed", ALPHA, png(7), {}),
        ("b-allow", BETA, png(8), {}),
    ]
    for minute, (event_id, tenant, data, extra) in enumerate(specs):
        key = f"{prefix}/{event_id}.png"
        version = None
        if data is not None and event_id != "a-changed":
            version = put(s3_settings, key, data)
        if event_id == "a-changed":
            put(s3_settings, key, png(70))  # other bytes than the ones judged
        doc = audited(event_id, tenant, minute, data=data, version=version, key=key, **extra)
        if event_id == "a-block":
            doc["verdict"]["object"].update(key=f"{prefix}/a/replaced.png", version_id=v1)
            doc["verdict"]["assessment"]["rationale"] = "a nude photograph"
        if event_id == "a-smoke":
            doc["verdict"]["model"]["smoke_test"] = True
        if event_id == "a-na":
            doc["verdict"]["assessment"]["rating"] = "Unsafe"
        docs.append(doc)
    with AuditStore.open(f"sqlite:///{tmp_path / 'audit.db'}") as opened:
        fill(opened, docs)
        yield opened


def exporter(out: Path, s3_settings: S3Settings) -> Exporter:
    (out / "images").mkdir(parents=True, exist_ok=True)
    fetch = FetchSettings()
    return Exporter(
        out,
        S3ObjectStore(s3_settings),
        limits=DecodeLimits.from_settings(fetch),
        max_bytes=fetch.max_object_bytes,
    )


def run(
    store: AuditStore, out: Path, s3: S3Settings, options: ExportOptions, **filters: str
) -> Exported:
    query = build_query(filters)
    result = export(query_rows(store, query), exporter(out, s3), options, workers=4)
    write_export(out, result, query, options)
    return result


def test_audited_decisions_become_samples(
    tmp_path: Path, store: AuditStore, s3_settings: S3Settings
) -> None:
    out = tmp_path / "out"
    result = run(store, out, s3_settings, ExportOptions(), tenant=ALPHA)
    samples = {s.id: s for s in read_dataset(out / "dataset.json")}
    assert set(samples) == {"a-block", "a-allow"}
    block = samples["a-block"]
    assert (block.rating, block.category, block.rationale) == ("Unsafe", O4, "a nude photograph")
    assert block.prompt == policy(ALPHA).document["prompt"]  # what the service sent
    assert block.policy == f"{ALPHA}@{policy(ALPHA).version}"
    assert block.augmented is None
    # The version that was judged, not the object's current bytes.
    assert (out / block.image).read_bytes() == png(1)
    assert block.image == f"images/{hashlib.sha256(png(1)).hexdigest()}.png"
    assert (samples["a-allow"].rating, samples["a-allow"].category) == ("Safe", NA)
    skipped = {
        json.loads(line)["event_id"]: json.loads(line)["reason"]
        for line in (out / "skipped.jsonl").read_text(encoding="utf-8").splitlines()
    }
    assert set(skipped) == {"a-error", "a-smoke", "a-na", "a-gone", "a-changed"}
    assert "engine_timeout" in skipped["a-error"]
    assert "smoke-test" in skipped["a-smoke"]
    assert "Unsafe without a category" in skipped["a-na"]
    assert "object_not_found" in skipped["a-gone"]
    assert "differ from the ones judged" in skipped["a-changed"]
    summary = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert (summary["rows_read"], summary["samples"], summary["skipped"]) == (7, 2, 5)
    assert summary["filters"] == {"tenant": ALPHA}
    assert result.rows == 7


def test_reviewer_labels_override_the_model(
    tmp_path: Path, store: AuditStore, s3_settings: S3Settings
) -> None:
    labels_file = tmp_path / "reviews.csv"
    labels_file.write_text(
        "event_id,rating,category,rationale\n"
        "a-allow,unsafe,o1,\n"  # the model said Safe: a disagreement, no rationale yet
        "a-block,Unsafe,O4,\n"  # agrees: the recorded rationale stays
        "a-error,Safe,NA,a landscape\n",  # no assessment at all: the label makes it usable
        encoding="utf-8",
    )
    labels = read_labels(labels_file)
    out = tmp_path / "out"
    result = run(store, out, s3_settings, ExportOptions(labels, labelled_only=True))
    samples = {s.id: s for s in read_dataset(out / "dataset.json")}
    assert set(samples) == {"a-allow", "a-block", "a-error"}
    assert (samples["a-allow"].rating, samples["a-allow"].category) == ("Unsafe", O1)
    assert samples["a-allow"].rationale is None
    assert samples["a-block"].rationale == "a nude photograph"
    assert samples["a-error"].rationale == "a landscape"
    assert (result.labelled, result.unlabelled) == (3, 5)
    assert not (out / "skipped.jsonl").exists()
    stream = io.StringIO()
    finish_line(ExportProgress(stream), result)
    assert stream.getvalue().startswith(
        "dataset from-audit: rows 8, exported 3, skipped 0, unlabelled 5, "
    )


def test_max_samples_stops_the_export(
    tmp_path: Path, store: AuditStore, s3_settings: S3Settings
) -> None:
    result = run(store, tmp_path / "out", s3_settings, ExportOptions(max_samples=1))
    assert len(result.samples) == 1
    assert len(read_dataset(tmp_path / "out" / "dataset.json")) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("event_id,rating\n", "the header lacks category"),
        ("event_id,rating,category\ne1,Unsafe,NA\n", ":2: category: an Unsafe label needs"),
        ("event_id,rating,category\ne1,Bad,O1\n", ":2: rating: not understood: 'Bad'"),
        ("event_id,rating,category\ne1,Safe,NA\ne1,Safe,NA\n", ":3: event_id: e1 is labelled"),
    ],
)
def test_bad_labels_files_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="--labels") as info:
        read_labels(path)
    assert message in str(info.value)


def test_the_command_line(
    tmp_path: Path,
    store: AuditStore,
    s3_settings: S3Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MODERATOR_AUDIT__URL", store.url)
    monkeypatch.setenv("MODERATOR_S3__ENDPOINT_URL", str(s3_settings.endpoint_url))
    monkeypatch.setenv("MODERATOR_S3__REGION", "us-east-1")
    monkeypatch.setenv("MODERATOR_S3__ADDRESSING_STYLE", "path")
    out = tmp_path / "cli"
    assert main(["dataset", "from-audit", "--out", str(out), "--decision", "maybe"]) == 2
    assert "--decision: must be one of allow, review, block" in capsys.readouterr().err
    window = ["--since", "2026-02-01T00:00:00Z", "--until", "2026-01-01T00:00:00Z"]
    assert main(["dataset", "from-audit", "--out", str(out), *window]) == 2
    assert "moderator: --until: must be later than --since" in capsys.readouterr().err
    assert main(["dataset", "from-audit", "--out", str(out), "--labelled-only"]) == 2
    assert "--labelled-only: needs --labels" in capsys.readouterr().err
    under_a_file = out.parent / "notes.txt" / "x"
    (out.parent / "notes.txt").write_text("mine")
    assert main(["dataset", "from-audit", "--out", str(under_a_file)]) == 2
    assert capsys.readouterr().err.startswith(f"moderator: --out: cannot create {under_a_file}: ")
    assert main(["dataset", "from-audit", "--out", str(out), "--tenant", BETA]) == 0
    assert capsys.readouterr().out.strip() == f"1 sample -> {out / 'dataset.json'}"
    (sample,) = read_dataset(out / "dataset.json")
    assert sample.id == "b-allow" and (out / sample.image).is_file()
    monkeypatch.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{tmp_path / 'none.db'}")
    assert main(["dataset", "from-audit", "--out", str(out)]) == 1


def test_a_label_never_takes_a_smoke_test_model_s_rationale(
    tmp_path: Path, store: AuditStore, s3_settings: S3Settings
) -> None:
    """A reviewer who agrees with a smoke-test model's answer labels the image; the model's
    stand-in rationale is still meaningless and must not become training text."""
    labels_file = tmp_path / "reviews.csv"
    labels_file.write_text("event_id,rating,category\na-smoke,Unsafe,O1\n", encoding="utf-8")
    out = tmp_path / "out"
    options = ExportOptions(read_labels(labels_file), labelled_only=True)
    run(store, out, s3_settings, options)
    [sample] = read_dataset(out / "dataset.json")
    assert (sample.id, sample.rating, sample.category) == ("a-smoke", "Unsafe", O1)
    assert sample.rationale is None


def test_skipped_rows_are_counted_by_kind() -> None:
    skipped = [
        Skip("a", "image: fetch_failed: s3://b/a.png: Unable to locate credentials"),
        Skip("b", "image: fetch_failed: s3://b/b.png: Unable to locate credentials"),
        Skip("c", "image: the object's bytes differ from the ones judged"),
        Skip("d", "a smoke-test model's answer and no reviewer label"),
        Skip("e", "no assessment (error corrupt_image) and no reviewer label"),
        Skip("f", "no assessment (error fetch_failed) and no reviewer label"),
    ]
    assert skip_kinds(skipped) == {
        "image: fetch_failed": 2,
        "image: the object's bytes differ from the ones judged": 1,
        "a smoke-test model's answer and no reviewer label": 1,
        "no assessment and no reviewer label": 2,
    }
    assert skipped_line(skipped, Path("out/skipped.jsonl")) == (
        "6 row(s) skipped, listed in out/skipped.jsonl: 2 image: fetch_failed; 2 no assessment "
        "and no reviewer label; 1 image: the object's bytes differ from the ones judged; 1 a "
        "smoke-test model's answer and no reviewer label"
    )
