"""S3ObjectStore error mapping, retries and size limits, against a scripted fake client."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from structlog.testing import capture_logs

from moderator.errors import ErrorCode, ProcessingError
from moderator.fetch.outage import StoreOutage
from moderator.fetch.s3 import BACKOFF_CAP_S, S3ObjectStore, build_s3_client
from moderator.obs.store import store_check
from moderator.obs.telemetry import Telemetry
from moderator.settings import S3Settings

SETTINGS = S3Settings(max_attempts=4)


class FakeBody:
    """A streaming body that hands out its bytes in reads and records how it was used."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self._data = data
        self._pos = 0
        self._fail_after = fail_after
        self.reads: list[int | None] = []
        self.closed = False

    def read(self, amt: int | None = None) -> bytes:
        self.reads.append(amt)
        if self._fail_after is not None and self._pos >= self._fail_after:
            raise ResponseStreamingError(error="connection reset by peer")
        end = len(self._data) if amt is None else self._pos + amt
        if self._fail_after is not None:
            end = min(end, self._fail_after)
        chunk = self._data[self._pos : end]
        self._pos += len(chunk)
        return chunk

    def close(self) -> None:
        self.closed = True


def ok(data: bytes, *, length: int | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "Body": FakeBody(data),
        "ContentLength": len(data) if length is None else length,
        "ETag": '"abc123"',
        "ContentType": "image/png",
        **extra,
    }


def client_error(code: str, status: int, headers: dict[str, str] | None = None) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "scripted"},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}},
    }
    return ClientError(response, "GetObject")


class FakeS3Client:
    """Answers get_object from a script of responses and exceptions, recording each call."""

    def __init__(self, *script: dict[str, Any] | Exception) -> None:
        self._script = deque(script)
        self.calls: list[dict[str, Any]] = []
        self.probe: Exception | None = EndpointConnectionError(endpoint_url="http://s3.local")
        self.probes = 0

    def head_bucket(self, **params: Any) -> dict[str, Any]:
        """The store's answer to a HEAD of the bucket: `probe` raised (down), or an answer."""
        self.probes += 1
        if self.probe is not None:
            raise self.probe
        return {}

    def get_object(self, **params: Any) -> dict[str, Any]:
        self.calls.append(params)
        step = self._script.popleft()
        if isinstance(step, Exception):
            raise step
        return step


def make_store(
    *script: dict[str, Any] | Exception, attempts: int = 4, outage_wait_s: float = 0.0
) -> tuple[S3ObjectStore, FakeS3Client, list[float]]:
    """A store over a scripted client. `outage_wait_s` 0 by default: a failing read gives up
    after its attempts, as when the store serves other reads (the outage tests set it)."""
    client = FakeS3Client(*script)
    sleeps: list[float] = []
    settings = S3Settings(max_attempts=attempts, outage_wait_s=outage_wait_s)
    store = S3ObjectStore(settings, client, sleep=sleeps.append)
    return store, client, sleeps


def fail_code(store: S3ObjectStore, max_bytes: int = 1000) -> ProcessingError:
    with pytest.raises(ProcessingError) as info:
        store.get("uploads", "acme/a.png", None, max_bytes)
    assert "\n" not in info.value.message
    return info.value


def test_success_returns_bytes_and_metadata() -> None:
    store, client, sleeps = make_store(ok(b"png-bytes", VersionId="v9"))
    got = store.get("uploads", "acme/a.png", None, 1000)
    assert got.data == b"png-bytes"
    assert got.etag == "abc123"
    assert got.version_id == "v9"
    assert got.content_type == "image/png"
    assert client.calls == [{"Bucket": "uploads", "Key": "acme/a.png"}]
    assert sleeps == []


def test_version_id_is_passed_through() -> None:
    store, client, _ = make_store(ok(b"old", VersionId="v1"))
    got = store.get("uploads", "acme/a.png", "v1", 1000)
    assert client.calls == [{"Bucket": "uploads", "Key": "acme/a.png", "VersionId": "v1"}]
    assert got.version_id == "v1"


def test_requested_version_is_kept_when_s3_does_not_echo_it() -> None:
    store, _, _ = make_store(ok(b"x"))
    assert store.get("uploads", "k", "v7", 10).version_id == "v7"


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("NoSuchKey", 404, ErrorCode.OBJECT_NOT_FOUND),
        ("NoSuchVersion", 404, ErrorCode.OBJECT_NOT_FOUND),
        ("NoSuchBucket", 404, ErrorCode.OBJECT_NOT_FOUND),
        ("404", 404, ErrorCode.OBJECT_NOT_FOUND),
        ("AccessDenied", 403, ErrorCode.ACCESS_DENIED),
        ("InvalidAccessKeyId", 403, ErrorCode.ACCESS_DENIED),
    ],
)
def test_final_errors_are_not_retried(code: str, status: int, expected: ErrorCode) -> None:
    store, client, sleeps = make_store(client_error(code, status), ok(b"never"))
    err = fail_code(store)
    assert err.code is expected
    assert "s3://uploads/acme/a.png" in err.message
    assert len(client.calls) == 1
    assert sleeps == []


def test_a_version_that_is_a_delete_marker_is_not_found() -> None:
    error = client_error("MethodNotAllowed", 405, {"x-amz-delete-marker": "true"})
    store, client, _ = make_store(error)
    assert fail_code(store).code is ErrorCode.OBJECT_NOT_FOUND
    assert len(client.calls) == 1


@pytest.mark.parametrize(
    "failure",
    [
        client_error("SlowDown", 503),
        client_error("Throttling", 400),
        client_error("ThrottlingException", 400),
        client_error("RequestLimitExceeded", 400),
        client_error("TooManyRequests", 429),
        client_error("InternalError", 500),
        client_error("", 502),
        client_error("RequestTimeout", 400),
        EndpointConnectionError(endpoint_url="http://s3.invalid"),
        ReadTimeoutError(endpoint_url="http://s3.invalid"),
    ],
)
def test_transient_failure_is_retried_then_succeeds(failure: Exception) -> None:
    store, client, sleeps = make_store(failure, ok(b"finally"))
    assert store.get("uploads", "acme/a.png", None, 1000).data == b"finally"
    assert len(client.calls) == 2
    assert len(sleeps) == 1
    assert 0 <= sleeps[0] <= BACKOFF_CAP_S


def test_slowdown_twice_then_success_backs_off_within_the_cap() -> None:
    store, client, sleeps = make_store(
        client_error("SlowDown", 503), client_error("SlowDown", 503), ok(b"img")
    )
    assert store.get("uploads", "acme/a.png", None, 1000).data == b"img"
    assert len(client.calls) == 3
    assert len(sleeps) == 2
    assert all(0 <= s <= BACKOFF_CAP_S for s in sleeps)


def test_retries_exhausted_is_fetch_failed() -> None:
    store, client, sleeps = make_store(*[client_error("SlowDown", 503)] * 4, ok(b"late"))
    err = fail_code(store)
    assert err.code is ErrorCode.FETCH_FAILED
    assert "SlowDown" in err.message
    assert "4 attempts" in err.message
    assert len(client.calls) == 4
    assert len(sleeps) == 3


def test_one_attempt_means_no_retry() -> None:
    store, client, sleeps = make_store(client_error("SlowDown", 503), attempts=1)
    assert fail_code(store).code is ErrorCode.FETCH_FAILED
    assert len(client.calls) == 1
    assert sleeps == []


@pytest.mark.parametrize(("code", "status"), [("InvalidArgument", 400), ("InvalidRange", 416)])
def test_other_client_errors_fail_without_retry(code: str, status: int) -> None:
    store, client, sleeps = make_store(client_error(code, status), ok(b"never"))
    err = fail_code(store)
    assert err.code is ErrorCode.FETCH_FAILED
    assert code in err.message
    assert len(client.calls) == 1
    assert sleeps == []


def test_declared_length_over_limit_is_refused_without_reading_the_body() -> None:
    response = ok(b"x" * 2000)
    store, client, _ = make_store(response)
    err = fail_code(store, max_bytes=1000)
    assert err.code is ErrorCode.OBJECT_TOO_LARGE
    assert "2000" in err.message
    body: FakeBody = response["Body"]
    assert body.reads == []
    assert body.closed
    assert len(client.calls) == 1


def test_body_longer_than_declared_is_cut_off_while_reading() -> None:
    response = ok(b"y" * 5000, length=10)
    store, client, _ = make_store(response)
    err = fail_code(store, max_bytes=1000)
    assert err.code is ErrorCode.OBJECT_TOO_LARGE
    body: FakeBody = response["Body"]
    assert body.closed
    assert sum(a or 0 for a in body.reads) <= 1001
    assert len(client.calls) == 1


def test_body_exactly_at_the_limit_is_fine() -> None:
    store, _, _ = make_store(ok(b"z" * 1000))
    assert len(store.get("b", "k", None, 1000).data) == 1000


def test_large_body_is_read_in_chunks() -> None:
    response = ok(b"q" * (3 << 20))
    store, _, _ = make_store(response)
    assert len(store.get("b", "k", None, 4 << 20).data) == 3 << 20
    body: FakeBody = response["Body"]
    assert len(body.reads) == 4  # three full chunks, then the empty read at the end
    assert body.closed


def test_body_read_error_is_retried_from_the_start() -> None:
    broken = ok(b"abcdef")
    broken["Body"] = FakeBody(b"abcdef", fail_after=3)
    store, client, sleeps = make_store(broken, ok(b"abcdef"))
    assert store.get("b", "k", None, 100).data == b"abcdef"
    assert len(client.calls) == 2
    assert broken["Body"].closed
    assert len(sleeps) == 1


def test_body_read_errors_until_exhausted_are_fetch_failed() -> None:
    script = []
    for _ in range(3):
        response = ok(b"abcdef")
        response["Body"] = FakeBody(b"abcdef", fail_after=0)
        script.append(response)
    store, client, _ = make_store(*script, attempts=3)
    err = fail_code(store)
    assert err.code is ErrorCode.FETCH_FAILED
    assert "body read failed" in err.message
    assert len(client.calls) == 3


def test_client_built_from_settings_disables_botocore_retries() -> None:
    settings = S3Settings(
        endpoint_url="http://127.0.0.1:9",
        region="eu-west-1",
        addressing_style="path",
        connect_timeout_s=1.5,
        read_timeout_s=7.0,
        max_pool_connections=5,
    )
    client = build_s3_client(settings)
    config = client.meta.config
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.region_name == "eu-west-1"
    assert config.s3 == {"addressing_style": "path"}
    assert config.retries["total_max_attempts"] == 1
    assert (config.connect_timeout, config.read_timeout) == (1.5, 7.0)
    assert config.max_pool_connections == 5


def test_unreachable_endpoint_is_fetch_failed_after_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings = S3Settings(
        endpoint_url="http://127.0.0.1:9",  # discard port: nothing listens
        region="us-east-1",
        connect_timeout_s=0.5,
        max_attempts=2,
        outage_wait_s=0,
    )
    client = build_s3_client(settings)
    sends: list[str] = []
    client.meta.events.register("before-send.s3", lambda **kw: sends.append(kw["request"].url))
    sleeps: list[float] = []
    store = S3ObjectStore(settings, client, sleep=sleeps.append)
    err = fail_code(store)
    assert err.code is ErrorCode.FETCH_FAILED
    assert "EndpointConnectionError" in err.message
    assert len(sleeps) == 1
    assert len(sends) == 2  # one request per tenacity attempt: botocore adds none of its own


# -- an outage: the store serves no read ----------------------------------------------------------


class FakeClock:
    """The outage's clock, moved on by the backoff's sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def outage_store(
    *script: dict[str, Any] | Exception, wait_s: float = 30.0
) -> tuple[S3ObjectStore, FakeS3Client, FakeClock]:
    client, clock = FakeS3Client(*script), FakeClock()
    settings = S3Settings(max_attempts=4, outage_wait_s=wait_s)
    return S3ObjectStore(settings, client, sleep=clock.sleep, clock=clock), client, clock


def refused() -> Exception:
    return EndpointConnectionError(endpoint_url="http://s3.local")


@pytest.mark.usefixtures("info_logs")
def test_a_read_waits_out_an_outage_instead_of_failing() -> None:
    # Twelve refused connections (three times the attempts), then the store is back.
    store, client, _ = outage_store(*[refused()] * 12, ok(b"judged"))
    with capture_logs() as logs:
        got = store.get("uploads", "acme/a.png", None, 1000)
    assert got.data == b"judged"
    assert len(client.calls) == 13
    events = [line["event"] for line in logs]
    assert events.count("s3_get_retry") == 3  # its own attempts; then it waits quietly
    assert events.count("s3_unavailable") == 1
    assert events.count("s3_available_again") == 1
    assert store.outage.failing_s() == 0


def test_an_outage_longer_than_the_wait_is_fetch_failed() -> None:
    store, client, clock = outage_store(*[refused()] * 200, wait_s=10.0)
    err = fail_code(store)
    assert err.code is ErrorCode.FETCH_FAILED
    assert "the store serving no read" in err.message
    assert 10.0 <= sum(clock.sleeps) < 10.0 + BACKOFF_CAP_S
    assert len(client.calls) > 4


def test_a_read_waiting_when_the_store_comes_back_does_not_give_up() -> None:
    # Its try in flight fails just after another read is served: it tries again, and reads.
    store, client, clock = outage_store(*[refused()] * 6, ok(b"judged"))
    store._sleep = served_elsewhere_after(store, client, clock, tries=5)
    assert store.get("uploads", "acme/a.png", None, 1000).data == b"judged"
    assert len(client.calls) == 7


def served_elsewhere_after(
    store: S3ObjectStore, client: FakeS3Client, clock: FakeClock, tries: int
) -> Callable[[float], None]:
    """A backoff sleep during which another read is served, once this one has made `tries`."""

    def sleep(seconds: float) -> None:
        FakeClock.sleep(clock, seconds)
        if len(client.calls) == tries:
            store.outage.answered()

    return sleep


@pytest.mark.usefixtures("info_logs")
def test_one_object_failing_while_the_store_answers_is_not_an_outage() -> None:
    # No other read in flight to tell: the store answers a HEAD of the bucket, so it is up.
    store, client, _ = outage_store(*[client_error("InternalError", 500)] * 4, ok(b"x"))
    client.probe = client_error("AccessDenied", 403)  # an answer all the same
    with capture_logs() as logs:
        err = fail_code(store)
    assert err.code is ErrorCode.FETCH_FAILED and "(4 attempts)" in err.message
    assert (len(client.calls), client.probes) == (4, 1)
    assert "s3_unavailable" not in [line["event"] for line in logs]


@pytest.mark.usefixtures("info_logs")
@pytest.mark.parametrize(
    ("code", "status"), [("SlowDown", 503), ("ServiceUnavailable", 503), ("", 502)]
)
def test_a_store_saying_it_cannot_serve_now_is_waited_out_though_it_answers_a_head(
    code: str, status: int
) -> None:
    # Throttled or unavailable on every read, while a HEAD of the bucket answers: no read was
    # served, and the store said why; the object is not the problem.
    store, client, _ = outage_store(*[client_error(code, status)] * 8, ok(b"judged"))
    client.probe = None  # the HEAD answers
    with capture_logs() as logs:
        got = store.get("uploads", "acme/a.png", None, 1000)
    assert got.data == b"judged"
    assert (len(client.calls), client.probes) == (9, 0)
    assert [line["event"] for line in logs].count("s3_unavailable") == 1


def test_a_throttled_read_gives_up_after_its_attempts_when_the_store_serves_others() -> None:
    store, client, clock = outage_store(*[client_error("SlowDown", 503)] * 4, ok(b"x"))

    def served_elsewhere(seconds: float) -> None:
        FakeClock.sleep(clock, seconds)
        store.outage.answered()

    store._sleep = served_elsewhere
    assert fail_code(store).code is ErrorCode.FETCH_FAILED
    assert len(client.calls) == 4


def test_a_read_gives_up_after_its_attempts_when_the_store_serves_others() -> None:
    # Another read was served after this one started: the object is the problem, not the store.
    store, client, clock = outage_store(*[client_error("InternalError", 500)] * 4, ok(b"x"))

    def served_elsewhere(seconds: float) -> None:
        FakeClock.sleep(clock, seconds)
        store.outage.answered()

    store._sleep = served_elsewhere
    err = fail_code(store)
    assert err.code is ErrorCode.FETCH_FAILED
    assert "4 attempts)" in err.message
    assert len(client.calls) == 4


def test_every_read_failing_for_a_minute_makes_s3_not_ready() -> None:
    clock = FakeClock()
    outage = StoreOutage(300, clock)
    telemetry = Telemetry()
    check = store_check(outage, telemetry.metrics)
    assert check().ok
    assert check().detail == "no read failing"
    outage.retrying(1)
    outage.failed()
    clock.now += 15
    early = check()  # failing, not for long enough: still ready, and it says so
    assert early.ok and early.detail == "every S3 read has failed for 15 s (not ready past 60 s)"
    clock.now += 46
    found = check()
    assert not found.ok and "every S3 read has failed for 61 s" in found.detail
    assert b"moderator_object_store_ready 0.0" in telemetry.scrape()
    outage.answered()
    assert check().ok
    outage.failed()
    clock.now += 61
    outage.retrying(-1)  # the read gave up: no failure is current, readiness comes back
    assert check().ok


def test_too_large_messages_read_as_sentences() -> None:
    store, _, _ = make_store(ok(b"x" * 2000))
    err = fail_code(store, max_bytes=1000)
    assert (err.code, err.message) == (
        ErrorCode.OBJECT_TOO_LARGE,
        "object is 2000 bytes (limit 1000)",
    )
    store, _, _ = make_store(ok(b"x" * 2000, length=10))  # S3 understated it: counted as read
    assert fail_code(store, max_bytes=1000).message == "object body is over 1000 bytes (limit 1000)"


def test_a_read_served_before_the_outage_began_does_not_end_the_wait() -> None:
    # Another read is served while this one's first try is under way; then the store refuses
    # every connection, HEAD included. What decides is the store during this read's last try.
    store, client, clock = outage_store(*[refused()] * 9, ok(b"judged"))
    store._sleep = served_elsewhere_after(store, client, clock, tries=1)
    assert store.get("uploads", "acme/a.png", None, 1000).data == b"judged"
    assert len(client.calls) == 10 and client.probes == 1


def test_a_store_back_while_the_head_waited_gets_one_more_try() -> None:
    # A frozen store: every try times out; the HEAD, sent while it is frozen, is answered once
    # it thaws. The read tries once more instead of giving up on a store that works again.
    timeout = ReadTimeoutError(endpoint_url="http://s3.local")
    store, client, _ = outage_store(*[timeout] * 4, ok(b"judged"))
    client.probe = None  # the HEAD answers
    assert store.get("uploads", "acme/a.png", None, 1000).data == b"judged"
    assert (len(client.calls), client.probes) == (5, 1)


def test_an_object_timing_out_while_the_store_answers_fails_after_one_more_try() -> None:
    timeout = ReadTimeoutError(endpoint_url="http://s3.local")
    store, client, _ = outage_store(*[timeout] * 5, ok(b"x"))
    client.probe = None
    err = fail_code(store)
    assert err.code is ErrorCode.FETCH_FAILED and "(5 attempts)" in err.message
    assert (len(client.calls), client.probes) == (5, 2)


def test_a_read_refused_as_the_store_comes_back_tries_once_more() -> None:
    # Its last try is refused while another read, waiting out the outage, is served: the store
    # came back during that try. The read tries again instead of giving up on a working store.
    store, client, _ = outage_store(*[refused()] * 4, ok(b"judged"))
    scripted = client.get_object

    def served_elsewhere_during_the_last_try(**params: Any) -> dict[str, Any]:
        if len(client.calls) == 3:
            store.outage.answered()
        return scripted(**params)

    client.get_object = served_elsewhere_during_the_last_try  # type: ignore[method-assign]
    assert store.get("uploads", "acme/a.png", None, 1000).data == b"judged"
    assert (len(client.calls), client.probes) == (5, 0)
