"""The object-store port and its in-memory implementation."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from moderator.errors import ErrorCode, ProcessingError


@dataclass(frozen=True)
class FetchedObject:
    data: bytes
    etag: str | None
    version_id: str | None
    content_type: str | None


class ObjectStore(Protocol):
    """GET an object; failures raise ProcessingError with a code from the closed set."""

    def get(
        self, bucket: str, key: str, version_id: str | None, max_bytes: int
    ) -> FetchedObject: ...


class InMemoryObjectStore:
    """A dict-backed store for tests and offline runs."""

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()
        self.gets = 0

    def put(self, bucket: str, key: str, data: bytes) -> None:
        with self._lock:
            self._objects[(bucket, key)] = data

    def get(self, bucket: str, key: str, version_id: str | None, max_bytes: int) -> FetchedObject:
        with self._lock:
            self.gets += 1
            data = self._objects.get((bucket, key))
        if data is None:
            raise ProcessingError(ErrorCode.OBJECT_NOT_FOUND, f"s3://{bucket}/{key} not found")
        if len(data) > max_bytes:
            raise ProcessingError(
                ErrorCode.OBJECT_TOO_LARGE, f"object is {len(data)} bytes (limit {max_bytes})"
            )
        return FetchedObject(data=data, etag=None, version_id=version_id, content_type=None)
