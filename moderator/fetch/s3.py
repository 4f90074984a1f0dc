"""The S3 (or MinIO) adapter of the object-store port: bounded reads, one retry policy."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    wait_random_exponential,
)

from moderator.errors import ErrorCode, ProcessingError
from moderator.fetch.outage import StoreOutage
from moderator.fetch.store import FetchedObject
from moderator.masking import mask_passwords
from moderator.settings import S3Settings

log = structlog.get_logger("moderator.fetch")

BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 2.0
READ_CHUNK = 1 << 20

_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchVersion", "NoSuchBucket", "NotFound", "404"})
_DENIED = frozenset({"AccessDenied", "403", "Forbidden"})
# Throttling and "unavailable": the store says it cannot serve now, not that the object is bad.
_UNAVAILABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "ServiceUnavailable",
    }
)
_UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})
_TRANSIENT_CODES = _UNAVAILABLE_CODES | {"RequestTimeout", "InternalError"}
# Socket-level failures: the endpoint was unreachable, slow, or cut the body short.
_TRANSPORT_ERRORS = (BotoConnectionError, HTTPClientError, IncompleteReadError, OSError)


class _Transient(Exception):
    """A failure worth another attempt; becomes FETCH_FAILED once attempts run out.
    `unavailable`: the store answered that it cannot serve now (throttling, a 503);
    `unreached`: it did not answer at all (refused, timed out, cut off)."""

    def __init__(self, reason: str, unavailable: bool = False, unreached: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unavailable = unavailable
        self.unreached = unreached


def build_s3_client(settings: S3Settings) -> Any:
    """A boto3 S3 client for these settings, with botocore's own retries switched off."""
    config = Config(
        s3={"addressing_style": settings.addressing_style},
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        max_pool_connections=settings.max_pool_connections,
        # tenacity in S3ObjectStore is the one retry policy; two stacked ones multiply.
        retries={"total_max_attempts": 1, "mode": "standard"},
    )
    verify: str | bool = settings.ca_bundle if settings.ca_bundle else settings.verify_tls
    # A session per client: boto3's default session is shared module state, not thread-safe.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        verify=verify,
        config=config,
    )


@dataclass
class _Read:
    """One read's part in an outage: whether it is retrying, and waiting one out."""

    bucket: str
    retrying: bool = False
    waiting: bool = False
    tried_at: float = float("-inf")  # when its latest try began (the outage's clock)
    tried_again: bool = False  # one more try, for a store out of reach then and answering now


class S3ObjectStore:
    """GET objects with a size limit; errors become ProcessingError with a closed-set code.

    Not found and access denied are final. Throttling, 5xx, request timeouts and transport
    failures are retried with jittered exponential backoff, up to `settings.max_attempts`
    attempts in all, then reported as FETCH_FAILED, unless the store has served no read since
    this one started and either said it cannot serve now (throttling, a 503) or does not answer
    a HEAD of the bucket: then it keeps retrying for up to `settings.outage_wait_s`
    (moderator.fetch.outage). Anything else is FETCH_FAILED at once. `client` defaults to
    build_s3_client(settings); `sleep` is the backoff's and `clock` the outage's clock.
    """

    def __init__(
        self,
        settings: S3Settings,
        client: Any | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client if client is not None else build_s3_client(settings)
        self._max_attempts = settings.max_attempts
        self._sleep = sleep
        self.outage = StoreOutage(settings.outage_wait_s, clock)

    def get(self, bucket: str, key: str, version_id: str | None, max_bytes: int) -> FetchedObject:
        """Read the whole object (or the given version); never more than max_bytes + 1 bytes.

        The returned etag has S3's surrounding quotes removed; version_id is the one S3
        served (the current version when none was asked for), or the requested one.
        """
        where = f"s3://{bucket}/{key}"
        started, read = self.outage.now(), _Read(bucket)
        retrying = Retrying(
            stop=lambda state: self._stop(state, started, read),
            wait=wait_random_exponential(multiplier=BACKOFF_BASE_S, max=BACKOFF_CAP_S),
            retry=retry_if_exception_type(_Transient),
            sleep=self._sleep,
            before_sleep=lambda state: self._before_sleep(state, where, read),
            reraise=True,
        )
        try:
            return retrying(self._attempt, bucket, key, version_id, max_bytes, read)
        except _Transient as exc:
            attempts = retrying.statistics.get("attempt_number", self._max_attempts)
            waited = self.outage.now() - started
            during = f" over {waited:.0f} s, the store serving no read" if read.waiting else ""
            raise ProcessingError(
                ErrorCode.FETCH_FAILED, f"{where}: {exc.reason} ({attempts} attempts{during})"
            ) from exc
        finally:
            if read.retrying:
                self.outage.retrying(-1)
            if read.waiting:
                self.outage.waiting(-1)

    def _attempt(
        self, bucket: str, key: str, version_id: str | None, max_bytes: int, read: _Read
    ) -> FetchedObject:
        read.tried_at = self.outage.now()
        try:
            found = self._get_once(bucket, key, version_id, max_bytes)
        except _Transient:
            self.outage.failed()
            raise
        self.outage.answered()
        return found

    def _stop(self, state: RetryCallState, started: float, read: _Read) -> bool:
        """Give up once the attempts are used, unless the store is down for every read: then
        wait for it, for up to `outage_wait_s` since this read started. A read that waits
        gives up only then: when the store comes back, its next try succeeds.

        "Down for every read" is judged by the read's latest try, not by its start: a read
        served between this read's start and an outage says nothing of the store now. A read
        whose try did not reach the store while the store works (it came back during that try,
        or was frozen while the HEAD waited) tries once more before it gives up."""
        if state.attempt_number < self._max_attempts:
            return False
        if self.outage.expired(started):
            return True
        if read.waiting:
            return False
        exc = state.outcome.exception() if state.outcome is not None else None
        # The store served a read during this one's try, or answers and did not say it cannot
        # serve now: the object is at fault, unless this try did not reach the store at all.
        if self.outage.answered_since(read.tried_at) or (
            not getattr(exc, "unavailable", False) and self._answers(read.bucket)
        ):
            if getattr(exc, "unreached", False) and not read.tried_again:
                read.tried_again = True
                return False
            return True
        read.waiting = True
        self.outage.waiting(1, str(getattr(exc, "reason", "")))
        return False

    def _answers(self, bucket: str) -> bool:
        """Whether the store answers at all: a HEAD of the bucket, where any answer but a 5xx
        or throttling (a 403 too) shows it up. With no other reads, this tells one object that
        keeps failing from an outage."""
        try:
            self._client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            answered = not isinstance(_classify(exc, f"s3://{bucket}"), _Transient)
        except (BotoCoreError, *_TRANSPORT_ERRORS):
            answered = False
        else:
            answered = True
        if answered:
            self.outage.answered()
        return answered

    def _before_sleep(self, state: RetryCallState, where: str, read: _Read) -> None:
        if not read.retrying:
            read.retrying = True
            self.outage.retrying(1)
        if not read.waiting:  # a read waiting out an outage retries quietly
            _log_retry(state, where)

    def _get_once(
        self, bucket: str, key: str, version_id: str | None, max_bytes: int
    ) -> FetchedObject:
        where = f"s3://{bucket}/{key}"
        params = {"Bucket": bucket, "Key": key}
        if version_id:
            params["VersionId"] = version_id
        try:
            response = self._client.get_object(**params)
        except ClientError as exc:
            raise _classify(exc, where) from exc
        except _TRANSPORT_ERRORS as exc:
            raise _Transient(type(exc).__name__, unreached=True) from exc
        except BotoCoreError as exc:
            # botocore names the endpoint URL in its messages: never show a password from it.
            raise ProcessingError(
                ErrorCode.FETCH_FAILED, f"{where}: {mask_passwords(str(exc))}"
            ) from exc
        body = response["Body"]
        try:
            length = response.get("ContentLength")
            if length is not None and length > max_bytes:
                raise _too_large(f"object is {length} bytes", max_bytes)
            data = _read_bounded(body, max_bytes)
        except _TRANSPORT_ERRORS as exc:
            raise _Transient(f"body read failed: {type(exc).__name__}", unreached=True) from exc
        finally:
            body.close()
        etag = response.get("ETag")
        return FetchedObject(
            data=data,
            etag=etag.strip('"') if etag else None,
            version_id=response.get("VersionId") or version_id,
            content_type=response.get("ContentType"),
        )


def _read_bounded(body: Any, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk: bytes = body.read(min(READ_CHUNK, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(f"object body is over {max_bytes} bytes", max_bytes)
        chunks.append(chunk)


def _too_large(what: str, max_bytes: int) -> ProcessingError:
    return ProcessingError(ErrorCode.OBJECT_TOO_LARGE, f"{what} (limit {max_bytes})")


def _classify(exc: ClientError, where: str) -> Exception:
    error = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    code = str(error.get("Code", ""))
    status = int(meta.get("HTTPStatusCode") or 0)
    deleted = meta.get("HTTPHeaders", {}).get("x-amz-delete-marker") == "true"
    if code in _NOT_FOUND or status == 404 or deleted:
        return ProcessingError(ErrorCode.OBJECT_NOT_FOUND, f"{where}: not found ({code})")
    if code in _DENIED or status == 403:
        return ProcessingError(ErrorCode.ACCESS_DENIED, f"{where}: access denied ({code})")
    if code in _TRANSIENT_CODES or status == 429 or status >= 500:
        unavailable = code in _UNAVAILABLE_CODES or status in _UNAVAILABLE_STATUSES
        return _Transient(f"{code or 'HTTP'} {status}", unavailable)
    return ProcessingError(ErrorCode.FETCH_FAILED, f"{where}: {code or 'error'} {status}")


def _log_retry(state: RetryCallState, where: str) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    log.warning(
        "s3_get_retry",
        object=where,
        attempt=state.attempt_number,
        reason=getattr(exc, "reason", None),
        wait_s=round(state.upcoming_sleep, 3),
    )
