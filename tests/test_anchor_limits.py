"""Reading anchors back holds bounded memory: capped S3 objects and listings, capped file lines."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from moderator.audit.errors import AuditError
from moderator.audit.integrity.anchors import (
    MAX_ANCHOR_BYTES,
    MAX_LIST_PAGES,
    FileAnchorSink,
    S3AnchorSink,
    latest_anchor,
)
from moderator.audit.models import Anchor, ChainHead

ANCHOR = Anchor(
    created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    heads=(ChainHead("moderation.audit", 0, 7, "b" * 64),),
)


class Body:
    """A streaming body of `size` bytes that never holds them: it counts what was read."""

    def __init__(self, data: bytes, size: int | None = None) -> None:
        self._data = data
        self._left = len(data) if size is None else size
        self.read_bytes = 0
        self.closed = False

    def read(self, amt: int | None = None) -> bytes:
        if amt is None:
            amt = self._left  # what an unbounded read asks for
        n = min(amt, self._left)
        self._left -= n
        self.read_bytes += n
        out = self._data[:n]
        return out + b" " * (n - len(out))

    def close(self) -> None:
        self.closed = True


class Paginator:
    def __init__(self, client: FakeS3) -> None:
        self._client = client

    def paginate(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        prefix, delimiter = kwargs["Prefix"], kwargs.get("Delimiter")
        self._client.listed.append(prefix)
        if self._client.endless:
            while True:  # an endpoint that keeps answering "truncated"
                self._client.pages += 1
                yield {"Contents": [{"Key": f"{prefix}x"}], "IsTruncated": True}
        keys = [k for k in self._client.keys if k.startswith(prefix)]
        if delimiter:
            folders = sorted({prefix + k[len(prefix) :].split("/", 1)[0] + "/" for k in keys})
            yield {"CommonPrefixes": [{"Prefix": f} for f in folders]}
        else:
            yield {"Contents": [{"Key": k} for k in keys]}


class FakeS3:
    def __init__(self, keys: list[str], body: Body, length: int | None) -> None:
        self.keys = keys
        self.body = body
        self.length = length
        self.endless = False
        self.pages = 0
        self.listed: list[str] = []
        self.got: list[str] = []

    def get_paginator(self, name: str) -> Paginator:
        assert name == "list_objects_v2"
        return Paginator(self)

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self.got.append(Key)
        response: dict[str, Any] = {"Body": self.body}
        if self.length is not None:
            response["ContentLength"] = self.length
        return response


def sink_with(body: Body, length: int | None) -> tuple[S3AnchorSink, FakeS3]:
    name = S3AnchorSink(None, "b", "anchors").key(ANCHOR)
    older = name.replace("T030405", "T010000")
    client = FakeS3(["anchors/2025/12/31/x.json", older, name], body, length)
    return S3AnchorSink(client, "b", "anchors"), client


def test_the_latest_s3_anchor_is_read() -> None:
    data = ANCHOR.to_bytes()
    sink, client = sink_with(Body(data), len(data))
    assert sink.latest() == ANCHOR
    assert client.got == [sink.key(ANCHOR)] and client.body.closed


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-length"])
def test_an_oversized_s3_anchor_is_refused_unread(declared: bool) -> None:
    size = 1 << 30
    sink, client = sink_with(Body(b"{", size), size if declared else None)
    with pytest.raises(AuditError, match="not an anchor"):
        sink.latest()
    assert client.body.read_bytes <= MAX_ANCHOR_BYTES + 1
    assert client.body.closed


def test_an_endless_s3_listing_is_cut_off() -> None:
    sink, client = sink_with(Body(b""), 0)
    client.endless = True
    with pytest.raises(AuditError, match="pages"):
        sink.latest()
    assert client.pages == MAX_LIST_PAGES + 1


def test_an_oversized_line_in_the_anchor_file_is_skipped(tmp_path: Path) -> None:
    sink = FileAnchorSink(tmp_path / "anchors.jsonl")
    sink.write(ANCHOR)
    with sink.path.open("ab") as out:
        out.write(b"x" * (MAX_ANCHOR_BYTES + (1 << 20)) + b"\n")
    assert latest_anchor(sink.path, block=1 << 20) == ANCHOR
    assert latest_anchor(sink.path, block=(1 << 20) + 3) == ANCHOR
    with sink.path.open("ab") as out:  # an oversized torn line at the end
        out.write(b"y" * (MAX_ANCHOR_BYTES + 5))
    assert latest_anchor(sink.path, block=1 << 20) == ANCHOR
    only = tmp_path / "only.jsonl"
    only.write_bytes(b"z" * (MAX_ANCHOR_BYTES + 7))
    assert latest_anchor(only, block=1 << 20) is None


def test_a_huge_line_is_not_held_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "anchors.jsonl"
    FileAnchorSink(path).write(ANCHOR)
    with path.open("ab") as out:
        for _ in range(40):
            out.write(b"x" * (1 << 20))
    tracemalloc.start()
    try:
        assert latest_anchor(path) == ANCHOR
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_ANCHOR_BYTES
