"""The package's exception root and the closed set of verdict error codes."""

from __future__ import annotations

from enum import StrEnum


class ModeratorError(Exception):
    """Root of every exception this package raises on purpose."""


class ConfigError(ModeratorError):
    """Invalid configuration or usage; the CLI prints it as one line and exits 2."""


class ErrorCode(StrEnum):
    """Why an event could not be judged normally. Closed set: documented in docs/errors.md."""

    MALFORMED_EVENT = "malformed_event"  # DLQ only: the message could not be parsed
    OBJECT_NOT_FOUND = "object_not_found"
    ACCESS_DENIED = "access_denied"
    OBJECT_TOO_LARGE = "object_too_large"
    FETCH_FAILED = "fetch_failed"  # retries exhausted on throttling, 5xx or timeouts
    UNSUPPORTED_FORMAT = "unsupported_format"
    CORRUPT_IMAGE = "corrupt_image"
    DECOMPRESSION_BOMB = "decompression_bomb"
    DECODE_TIMEOUT = "decode_timeout"  # more decoding work or CPU time than the fetch limits allow
    TENANT_MISMATCH = "tenant_mismatch"
    UNKNOWN_TENANT = "unknown_tenant"
    ENGINE_TIMEOUT = "engine_timeout"
    ENGINE_ERROR = "engine_error"
    UNPARSEABLE_OUTPUT = "unparseable_output"


SECURITY_ERRORS: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.TENANT_MISMATCH,
        ErrorCode.UNKNOWN_TENANT,
        ErrorCode.DECOMPRESSION_BOMB,
        ErrorCode.DECODE_TIMEOUT,
        ErrorCode.CORRUPT_IMAGE,
        ErrorCode.UNSUPPORTED_FORMAT,
        ErrorCode.OBJECT_TOO_LARGE,
    }
)
"""Error codes that a policy may never map to `allow`: an uploader can cause them on purpose (a
crafted file that is too big or too slow to decode, a picture cut short that viewers still
show, one in a format the service does not read, or padded past the size limit), so allowing
them would let any image through unchecked."""


class ProcessingError(ModeratorError):
    """A failure that becomes an error verdict: carries its code and a short message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message


DEAD_LETTER_ONLY: frozenset[ErrorCode] = frozenset({ErrorCode.MALFORMED_EVENT})
"""Error codes of messages that go to the dead-letter topic, never to a verdict: no policy's
`on_error` decides them."""
