"""Reading a server's answer with a byte cap, so that no answer, however large, compressed or
slow, holds more than the cap in memory. Decompression (gzip, deflate) is bounded the same way:
the cap counts decoded bytes.

httpx is only named for type checking, so this module imports without the `openai` extra.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

ERROR_BODY_BYTES = 64 << 10  # of an error answer: its message is all we keep (one line)
# zlib window bits: gzip's header, or zlib's (HTTP "deflate" is zlib-wrapped).
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class AnswerTooLarge(Exception):
    """The answer's body is longer than the cap."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        size = f"{declared} bytes, " if declared is not None else ""
        super().__init__(f"the answer is {size}over the {limit}-byte limit")
        self.limit = limit


class UnreadableAnswer(Exception):
    """The answer's body cannot be decoded (an unsupported or corrupt content encoding)."""


async def read_capped(response: httpx.Response, limit: int, *, truncate: bool = False) -> bytes:
    """The decoded body of a streamed `response`, at most `limit` bytes.

    A longer body raises AnswerTooLarge as soon as the cap is passed (a declared Content-Length
    over the cap before anything is read), or with `truncate` is cut at the cap; either way the
    rest is never read, and closing the response drops the connection.
    """
    declared = _declared_length(response)
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if declared is not None and declared > limit and encoding == "identity" and not truncate:
        raise AnswerTooLarge(limit, declared)
    decoder = _decoder(encoding)
    chunks: list[bytes] = []
    total = 0
    async for raw in response.aiter_raw():
        data = _inflate(decoder, raw, limit - total) if decoder is not None else raw
        total += len(data)
        if total > limit:
            if truncate:
                chunks.append(data[: len(data) - (total - limit)])
                return b"".join(chunks)
            raise AnswerTooLarge(limit)
        chunks.append(data)
    return b"".join(chunks)


def _declared_length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _decoder(encoding: str) -> zlib._Decompress | None:
    if encoding in ("", "identity"):
        return None
    wbits = _DECODERS.get(encoding)
    if wbits is None:
        raise UnreadableAnswer(f"unsupported Content-Encoding {encoding[:40]!r}")
    return zlib.decompressobj(wbits)


def _inflate(decoder: zlib._Decompress, data: bytes, room: int) -> bytes:
    """Decode `data`, producing at most `room + 1` bytes: one more than fits tells the caller
    the cap was passed, without inflating the rest of a compression bomb."""
    try:
        return decoder.decompress(data, max(room, 0) + 1)
    except zlib.error as exc:
        raise UnreadableAnswer(f"corrupt compressed answer: {exc}") from None
