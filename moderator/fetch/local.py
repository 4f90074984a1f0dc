"""The local-file adapter of the object-store port, for offline scans: the key is the path."""

from __future__ import annotations

import os
import stat

from moderator.errors import ErrorCode, ProcessingError
from moderator.fetch.store import FetchedObject

LOCAL_BUCKET = "local"
"""Marker bucket of local files in UploadEvents (an event's bucket must not be empty)."""


class LocalFileStore:
    """Reads regular files with a size limit; failures are ProcessingErrors like S3's.

    Only objects of `bucket` exist here. Missing paths and non-regular files (directories,
    FIFOs, devices) are `object_not_found`; permission errors are `access_denied`.
    """

    def __init__(self, bucket: str = LOCAL_BUCKET) -> None:
        self._bucket = bucket

    def get(self, bucket: str, key: str, version_id: str | None, max_bytes: int) -> FetchedObject:
        """Read the whole file; never more than max_bytes + 1 bytes. `version_id` is ignored."""
        if bucket != self._bucket:
            raise ProcessingError(ErrorCode.OBJECT_NOT_FOUND, f"{bucket}/{key}: not a local file")
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; regular files ignore it.
            fd = os.open(key, os.O_RDONLY | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ProcessingError(ErrorCode.OBJECT_NOT_FOUND, f"{key}: not found") from exc
        except PermissionError as exc:
            raise ProcessingError(ErrorCode.ACCESS_DENIED, f"{key}: permission denied") from exc
        except OSError as exc:
            raise ProcessingError(ErrorCode.FETCH_FAILED, f"{key}: {exc.strerror or exc}") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ProcessingError(ErrorCode.OBJECT_NOT_FOUND, f"{key}: not a regular file")
            if info.st_size > max_bytes:
                raise _too_large(f"file is {info.st_size} bytes", max_bytes)
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(max_bytes + 1)
        except OSError as exc:
            raise ProcessingError(ErrorCode.FETCH_FAILED, f"{key}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)
        if len(data) > max_bytes:  # the file grew after fstat
            raise _too_large(f"file is over {max_bytes} bytes", max_bytes)
        return FetchedObject(data=data, etag=None, version_id=None, content_type=None)


def _too_large(what: str, max_bytes: int) -> ProcessingError:
    return ProcessingError(ErrorCode.OBJECT_TOO_LARGE, f"{what} (limit {max_bytes})")
