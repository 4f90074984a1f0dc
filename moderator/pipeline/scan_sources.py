"""What `moderator scan` judges: a local file or folder walked lazily, or an S3 prefix listed
page by page. Usage errors (missing path, empty folder, no bucket) are ConfigErrors."""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from moderator.errors import ConfigError, ModeratorError
from moderator.fetch.local import LOCAL_BUCKET, LocalFileStore
from moderator.fetch.store import ObjectStore
from moderator.settings import Settings


@dataclass(frozen=True)
class Item:
    bucket: str  # the store's bucket: LOCAL_BUCKET for local files
    key: str
    size: int | None
    problem: str | None = None  # why it cannot be scanned (a folder that cannot be read)


@dataclass(frozen=True)
class Source:
    store: ObjectStore
    items: Iterator[Item]
    local: bool


def open_source(target: str, settings: Settings, *, exclude: Path | None) -> Source:
    """List `target` up to its first object: usage errors (missing, empty) raise ConfigError."""
    if target.startswith("s3://"):
        from moderator.fetch.s3 import S3ObjectStore, build_s3_client

        bucket, _, prefix = target.removeprefix("s3://").partition("/")
        if not bucket:
            raise ConfigError(f"scan: {target}: an S3 location is s3://bucket/prefix")
        client = build_s3_client(settings.s3)
        first, items = _peek(_list_s3(client, bucket, prefix), target)
        if first is None:
            raise ConfigError(f"scan: {target} matched no objects")
        return Source(S3ObjectStore(settings.s3, client), items, local=False)
    try:
        info = Path(target).stat()
    except FileNotFoundError as exc:
        raise ConfigError(f"scan: no such file or directory: {target}") from exc
    except OSError as exc:
        raise ConfigError(f"scan: cannot read {target}: {exc.strerror or exc}") from exc
    if stat.S_ISREG(info.st_mode):
        return Source(LocalFileStore(), iter([Item(LOCAL_BUCKET, target, info.st_size)]), True)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"scan: not a regular file or directory: {target}")
    try:
        top = _entries(target)
    except OSError as exc:
        raise ConfigError(f"scan: cannot read {target}: {exc.strerror or exc}") from exc
    first, items = _peek(_walk(top, exclude), target)
    if first is None:
        raise ConfigError(f"scan: {target} holds no files (hidden files are skipped)")
    return Source(LocalFileStore(), items, local=True)


def _peek(items: Iterator[Item], target: str) -> tuple[Item | None, Iterator[Item]]:
    try:
        first = next(items, None)
    except NoCredentialsError as exc:
        raise ConfigError(f"scan: {target}: no AWS credentials found") from exc
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            raise ConfigError(f"scan: {target}: no such bucket") from exc
        raise ModeratorError(f"scan: cannot list {target}: {code or exc}") from exc
    except BotoCoreError as exc:
        raise ModeratorError(f"scan: cannot list {target}: {exc}") from exc
    if first is None:
        return None, iter(())
    return first, itertools.chain([first], items)


def _list_s3(client: Any, bucket: str, prefix: str) -> Iterator[Item]:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", ()):
            key = obj["Key"]
            if not key.endswith("/"):  # "folder" placeholders written by consoles and tools
                yield Item(bucket, key, obj.get("Size"))


def _entries(path: str) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def _walk(top: list[os.DirEntry[str]], exclude: Path | None) -> Iterator[Item]:
    """Regular files depth first in name order, hidden names skipped. Symlinks to files are
    followed, symlinked folders are not (no cycles). A folder or file that cannot be read is an
    Item with its `problem`: the scan names it and counts it as not scanned."""
    stack = [iter(top)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                stack.append(iter(_entries(entry.path)))
                continue
            if not entry.is_file():
                continue
            info = entry.stat()
        except OSError as exc:
            yield Item(LOCAL_BUCKET, entry.path, None, f"cannot be read: {exc.strerror or exc}")
            continue
        if exclude is not None and _same_file(info, exclude):
            continue  # the --output file inside the scanned folder
        yield Item(LOCAL_BUCKET, entry.path, info.st_size)


def _same_file(info: os.stat_result, path: Path) -> bool:
    try:
        return os.path.samestat(info, path.stat())
    except OSError:
        return False
