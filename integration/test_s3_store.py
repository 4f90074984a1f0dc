"""S3ObjectStore against moto's S3 server over real HTTP: versions, missing objects, limits."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from moderator.errors import ErrorCode, ProcessingError
from moderator.fetch.s3 import S3ObjectStore, build_s3_client
from moderator.settings import S3Settings
from tests.moto_s3 import moto_s3
from tests.switch_port import SwitchPort

BUCKET = "uploads"


@pytest.fixture(scope="module")
def settings() -> Iterator[S3Settings]:
    with moto_s3() as endpoint:
        yield S3Settings(
            endpoint_url=endpoint,
            region="us-east-1",
            addressing_style="path",
            connect_timeout_s=2,
            read_timeout_s=5,
            max_attempts=2,
        )


@pytest.fixture(scope="module")
def s3(settings: S3Settings) -> Any:
    client = build_s3_client(settings)
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return client


@pytest.fixture(scope="module")
def store(settings: S3Settings) -> S3ObjectStore:
    return S3ObjectStore(settings)


def expect_error(store: S3ObjectStore, bucket: str, key: str, **kw: Any) -> ProcessingError:
    with pytest.raises(ProcessingError) as info:
        store.get(bucket, key, kw.get("version_id"), kw.get("max_bytes", 1 << 20))
    return info.value


def test_get_returns_bytes_etag_and_version(s3: Any, store: S3ObjectStore) -> None:
    put = s3.put_object(
        Bucket=BUCKET, Key="acme/a.png", Body=b"\x89PNG fake", ContentType="image/png"
    )
    got = store.get(BUCKET, "acme/a.png", None, 1 << 20)
    assert got.data == b"\x89PNG fake"
    assert got.etag == put["ETag"].strip('"')
    assert got.version_id == put["VersionId"]
    assert got.content_type == "image/png"


def test_version_id_selects_the_version(s3: Any, store: S3ObjectStore) -> None:
    first = s3.put_object(Bucket=BUCKET, Key="acme/v.jpg", Body=b"first version")
    second = s3.put_object(Bucket=BUCKET, Key="acme/v.jpg", Body=b"second version")
    assert first["VersionId"] != second["VersionId"]
    old = store.get(BUCKET, "acme/v.jpg", first["VersionId"], 1 << 20)
    new = store.get(BUCKET, "acme/v.jpg", second["VersionId"], 1 << 20)
    current = store.get(BUCKET, "acme/v.jpg", None, 1 << 20)
    assert (old.data, old.version_id) == (b"first version", first["VersionId"])
    assert (new.data, new.version_id) == (b"second version", second["VersionId"])
    assert (current.data, current.version_id) == (b"second version", second["VersionId"])


def test_missing_key_is_not_found(s3: Any, store: S3ObjectStore) -> None:
    err = expect_error(store, BUCKET, "acme/nope.png")
    assert err.code is ErrorCode.OBJECT_NOT_FOUND


def test_missing_bucket_is_not_found(s3: Any, store: S3ObjectStore) -> None:
    err = expect_error(store, "no-such-bucket", "acme/a.png")
    assert err.code is ErrorCode.OBJECT_NOT_FOUND


def test_missing_version_is_not_found(s3: Any, store: S3ObjectStore) -> None:
    s3.put_object(Bucket=BUCKET, Key="acme/one.png", Body=b"x")
    err = expect_error(
        store, BUCKET, "acme/one.png", version_id="3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"
    )
    assert err.code is ErrorCode.OBJECT_NOT_FOUND


def test_deleted_object_is_not_found(s3: Any, store: S3ObjectStore) -> None:
    s3.put_object(Bucket=BUCKET, Key="acme/gone.png", Body=b"x")
    marker = s3.delete_object(Bucket=BUCKET, Key="acme/gone.png")
    assert expect_error(store, BUCKET, "acme/gone.png").code is ErrorCode.OBJECT_NOT_FOUND
    by_marker = expect_error(store, BUCKET, "acme/gone.png", version_id=marker["VersionId"])
    assert by_marker.code is ErrorCode.OBJECT_NOT_FOUND


def test_size_limit(s3: Any, store: S3ObjectStore) -> None:
    s3.put_object(Bucket=BUCKET, Key="acme/big.bin", Body=b"b" * 5000)
    err = expect_error(store, BUCKET, "acme/big.bin", max_bytes=4999)
    assert err.code is ErrorCode.OBJECT_TOO_LARGE
    assert len(store.get(BUCKET, "acme/big.bin", None, 5000).data) == 5000


def test_multi_megabyte_object_round_trips(s3: Any, store: S3ObjectStore) -> None:
    payload = bytes(range(256)) * (3 * 4096 + 7)
    s3.put_object(Bucket=BUCKET, Key="acme/large.bin", Body=payload)
    assert store.get(BUCKET, "acme/large.bin", None, len(payload)).data == payload


# -- an outage: nothing listens at the store's address for a while ------------------------------


def test_a_read_waits_out_a_store_that_refuses_connections(s3: Any, settings: S3Settings) -> None:
    s3.put_object(Bucket=BUCKET, Key="acme/outage.png", Body=b"after the outage")
    assert settings.endpoint_url is not None
    target = urlsplit(settings.endpoint_url)
    assert target.hostname == "127.0.0.1" and target.port is not None
    forwarder = SwitchPort(target.port)
    forwarder.off()  # nothing listens there: connections are refused
    during = settings.model_copy(update={"endpoint_url": forwarder.url(), "outage_wait_s": 60.0})
    store = S3ObjectStore(during)
    got: list[bytes] = []
    reader = threading.Thread(
        target=lambda: got.append(store.get(BUCKET, "acme/outage.png", None, 1000).data)
    )
    try:
        reader.start()
        time.sleep(3)  # far more than the 2 attempts' backoff: it would have given up
        assert not got and store.outage.failing_s() > 2
        forwarder.on()
        reader.join(30)
    finally:
        forwarder.off()
    assert got == [b"after the outage"]
    assert store.outage.failing_s() == 0


def test_without_an_outage_wait_a_refused_read_fails_after_its_attempts(
    settings: S3Settings,
) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    store = S3ObjectStore(
        settings.model_copy(
            update={"endpoint_url": f"http://127.0.0.1:{port}", "outage_wait_s": 0.0}
        )
    )
    err = expect_error(store, BUCKET, "acme/never.png")
    assert err.code is ErrorCode.FETCH_FAILED and "(2 attempts)" in err.message


def test_reads_in_flight_when_the_store_goes_away_wait_for_it(
    s3: Any, settings: S3Settings
) -> None:
    """Readers keep the store busy; it goes away (connections cut, then refused) and comes back.
    Reads served just before the outage must not make the reads in flight give up: every read
    is served, none is fetch_failed."""
    for n in range(8):
        s3.put_object(Bucket=BUCKET, Key=f"acme/busy-{n}.png", Body=b"busy")
    assert settings.endpoint_url is not None
    forwarder = SwitchPort(urlsplit(settings.endpoint_url).port or 0)
    busy = settings.model_copy(update={"endpoint_url": forwarder.url(), "outage_wait_s": 60.0})
    store = S3ObjectStore(busy)
    stop, served, failed = threading.Event(), [0], []

    def read(n: int) -> None:
        while not stop.is_set():
            try:
                store.get(BUCKET, f"acme/busy-{n}.png", None, 1000)
                served[0] += 1
            except ProcessingError as exc:
                failed.append(exc.message)

    readers = [threading.Thread(target=read, args=(n,)) for n in range(8)]
    try:
        for reader in readers:
            reader.start()
        time.sleep(1.0)
        before = served[0]
        forwarder.off()
        time.sleep(3.0)
        forwarder.on()
        time.sleep(2.0)
    finally:
        stop.set()
        forwarder.on()
        for reader in readers:
            reader.join(60)
        forwarder.off()
    assert before > 0 and served[0] > before
    assert failed == []
