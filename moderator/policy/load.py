"""Reading one policy file: YAML text → `PolicyFile`, or a `PolicyError` naming file, line, reason.

The YAML is composed into a node tree first (the safe loader: no Python tags), then built into
plain dicts, lists and scalars while the line of every key and list item is recorded, so that a
pydantic error's `loc` is reported at the line of the offending key. Stricter than
`yaml.safe_load`:

- duplicate keys are an error (PyYAML silently keeps the last one); the error is recorded and
  the file is then checked with the last value, so that its other problems are reported too;
- aliases (`*name`) are refused outright, which rules out "billion laughs" expansion; anchors
  alone are harmless and ignored;
- merge keys (`<<`), non-string keys (quote `on:`/`yes:`, which YAML 1.1 reads as booleans) and
  tags other than the plain null/bool/int/float/str/timestamp/map/seq are refused;
- input is capped at `MAX_BYTES` and nesting at `MAX_DEPTH`;
- only regular files are read (symlinks to them included): a FIFO, device or directory named
  like a policy file is an error, never a read that blocks.

A directory's policy files are its `*.yaml` and `*.yml` files (`policy_paths`); the file name
without the suffix is the tenant id.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from moderator.errors import ConfigError
from moderator.policy.document import PolicyFile
from moderator.policy.messages import reason, relevant
from moderator.text import safe_line
from moderator.yaml_keys import line_at, yaml_problem

MAX_BYTES = 1 << 20
MAX_DEPTH = 32
SUFFIXES = (".yaml", ".yml")

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_TAG + t for t in ("null", "bool", "int", "float", "str", "timestamp"))
# PyYAML counts these as line breaks in its marks; lines computed here must agree.

Loc = tuple[str | int, ...]

# Why a file with no keys at all is refused rather than read as `{}`: an empty file is far more
# often a truncated write (`> file`, an editor caught between truncate and write) than a tenant
# meant to inherit everything, and reading it as `{}` would silently drop the tenant's settings.
EMPTY_FILE = (
    "the file is empty: a policy file is a mapping of keys (write {} for a tenant that keeps "
    "every inherited value)"
)


Problem = tuple[int | None, str]  # (1-based line or None, reason)


class PolicyError(ConfigError):
    """A policy file that cannot be used: where (file and, when known, 1-based line) and why.

    `line` and `reason` are the file's earliest problem; `others` are the rest found in the same
    pass. The message is one line: the earliest problem and a count of the others, for one-line
    contexts (start-up, `scan`); `problems()` lists each on its own (`policy validate`).
    """

    def __init__(
        self, path: Path, line: int | None, reason: str, others: tuple[Problem, ...] = ()
    ) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        self.others = others
        super().__init__(_where(path, line, reason) + more_problems(len(others)))

    def problems(self) -> list[str]:
        """Every problem, one `path:line: reason` each, the earliest first."""
        every = ((self.line, self.reason), *self.others)
        return [_where(self.path, line, reason) for line, reason in every]

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.line, self.reason, self.others))


def more_problems(count: int) -> str:
    """The suffix that counts the problems a one-line message leaves out."""
    if count <= 0:
        return ""
    return f" (and {count} more problem{'' if count == 1 else 's'})"


def _where(path: Path, line: int | None, reason: str) -> str:
    shown = safe_line(str(path))  # a file name may hold any character but / and NUL
    return f"{shown}:{line}: {reason}" if line is not None else f"{shown}: {reason}"


class _Refused(Exception):
    """Raised while building the tree; becomes a PolicyError with the file's path."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing aliases and deep nesting while it composes."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped stub
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(_mark_line(event.start_mark), "aliases (*name) are not allowed")
        if self._depth >= MAX_DEPTH:
            raise _Refused(_mark_line(event.start_mark), f"nested deeper than {MAX_DEPTH} levels")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def policy_paths(directory: Path) -> tuple[dict[str, Path], list[PolicyError]]:
    """{tenant id: path} for the `*.yaml` and `*.yml` entries of `directory`, in name order,
    and an error for each tenant id that both suffixes define (that id maps to its `.yaml`
    path, so callers can treat it as a file that failed to load). Entries are not opened."""
    try:
        names = sorted(entry.name for entry in os.scandir(directory))
    except OSError as exc:
        raise ConfigError(f"policies.dir: {directory}: {exc.strerror or exc}") from exc
    paths: dict[str, Path] = {}
    errors: list[PolicyError] = []
    for name in names:
        path = directory / name
        if path.suffix not in SUFFIXES or not path.stem:
            continue
        first = paths.get(path.stem)
        if first is None:
            paths[path.stem] = path
            continue
        yaml_path, other = (first, path) if first.suffix == ".yaml" else (path, first)
        paths[path.stem] = yaml_path
        errors.append(
            PolicyError(
                yaml_path, None, f"tenant {path.stem!r} is also defined by {other}: keep one"
            )
        )
    return paths, errors


def read_policy(path: Path) -> bytes:
    """The bytes of one policy file: a regular file (symlinks followed) of at most `MAX_BYTES`,
    else PolicyError. Opened non-blocking, so a FIFO cannot hang the caller."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise PolicyError(path, None, f"cannot read: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise PolicyError(path, None, f"not a regular file ({_kind(mode)})")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise PolicyError(path, None, f"cannot read: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if size > MAX_BYTES:
        raise PolicyError(path, None, f"larger than {MAX_BYTES} bytes")
    return b"".join(chunks)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device or other special file"


def load_file(path: Path) -> PolicyFile:
    """Read and validate one policy file (a regular file, UTF-8, at most `MAX_BYTES`)."""
    data = read_policy(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = line_at(data[: exc.start].decode("utf-8", "replace"), exc.start)
        raise PolicyError(path, line, "not valid UTF-8") from exc
    return load_text(text, path)


def load_text(text: str, path: Path) -> PolicyFile:
    """Validate policy YAML `text`; `path` is only used in error messages."""
    if len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise PolicyError(path, None, f"larger than {MAX_BYTES} bytes")
    lines: dict[Loc, int] = {(): 1}
    duplicates: list[Problem] = []
    try:
        doc = _parse(text, lines, duplicates)
    except _Refused as exc:
        raise _failed(path, [*duplicates, (exc.line, exc.reason)]) from None
    except yaml.YAMLError as exc:
        raise PolicyError(path, *yaml_problem(exc, text)) from None
    if doc is None:
        raise PolicyError(path, *_no_policy(text))
    if not isinstance(doc, dict):
        raise PolicyError(path, 1, "the top level must be a mapping of policy keys")
    try:
        policy = PolicyFile.model_validate(doc)
    except ValidationError as exc:
        raise _failed(path, [*duplicates, *_errors(exc.errors(), lines)]) from None
    if duplicates:
        raise _failed(path, duplicates)
    return policy


def _no_policy(text: str) -> Problem:
    """Where and why a document that reads as null is no policy: an empty file (blanks,
    comments and document markers only) or a null value written out (`null`, `~`)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is None or node.value == "":
        return None, EMPTY_FILE
    written = str(node.value)[:40]
    return _mark_line(node.start_mark), EMPTY_FILE.replace(
        "the file is empty", f"the file holds only {written!r}", 1
    )


def _failed(path: Path, problems: list[Problem]) -> PolicyError:
    """One error for a file's problems (at least one), the earliest line first; problems on one
    line keep the order they were found in (a stable sort)."""
    (line, reason), *others = sorted(problems, key=lambda problem: problem[0] or 0)
    return PolicyError(path, line, reason, tuple(others))


def _parse(text: str, lines: dict[Loc, int], duplicates: list[Problem]) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _build(loader, node, (), lines, duplicates)
    finally:
        loader.dispose()


def _build(
    loader: _Loader, node: yaml.Node, path: Loc, lines: dict[Loc, int], duplicates: list[Problem]
) -> Any:
    """The plain value of `node`, recording the line of every key and item below `path` in
    `lines`. A key given twice is appended to `duplicates` and its last value kept (with that
    value's lines), as YAML itself would, so the rest of the file can still be checked."""
    line = _mark_line(node.start_mark)
    if isinstance(node, yaml.MappingNode):
        _check_tag(node, _TAG + "map")
        mapping: dict[str, Any] = {}
        first: dict[str, int] = {}  # key -> the line it was first given at
        for key_node, value_node in node.value:
            key = _key(loader, key_node)
            key_line = _mark_line(key_node.start_mark)
            if key in first:
                duplicates.append((key_line, f"duplicate key {key!r} (first at line {first[key]})"))
                _forget(lines, (*path, key))
            first.setdefault(key, key_line)
            lines[(*path, key)] = key_line
            mapping[key] = _build(loader, value_node, (*path, key), lines, duplicates)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        _check_tag(node, _TAG + "seq")
        items = []
        for index, item in enumerate(node.value):
            lines[(*path, index)] = _mark_line(item.start_mark)
            items.append(_build(loader, item, (*path, index), lines, duplicates))
        return items
    if node.tag not in _SCALAR_TAGS:
        raise _Refused(line, f"unsupported YAML tag {_short_tag(node.tag)}")
    try:
        return loader.construct_object(node)
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        why = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
        raise _Refused(line, f"invalid value {str(node.value)[:40]!r}: {why}") from None


def _forget(lines: dict[Loc, int], path: Loc) -> None:
    """Drop the lines recorded at and below `path`: a value replaced by a duplicate key's must
    not leave its keys behind, where an error in the new value could be placed on them."""
    for recorded in [loc for loc in lines if loc[: len(path)] == path]:
        del lines[recorded]


def _key(loader: _Loader, node: yaml.Node) -> str:
    line = _mark_line(node.start_mark)
    if node.tag == _TAG + "merge":
        raise _Refused(line, "merge keys (<<) are not supported")
    if not isinstance(node, yaml.ScalarNode):
        raise _Refused(line, "mapping keys must be plain strings")
    key = _build(loader, node, (), {}, [])
    if not isinstance(key, str):
        raise _Refused(line, f"key {str(node.value)[:40]!r} is not read as a string: quote it")
    return key


def _check_tag(node: yaml.Node, expected: str) -> None:
    if node.tag != expected:
        raise _Refused(_mark_line(node.start_mark), f"unsupported YAML tag {_short_tag(node.tag)}")


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else repr(tag)


class _Mark(Protocol):
    line: int


def _mark_line(mark: _Mark | None) -> int:
    return 1 if mark is None else mark.line + 1


def _errors(errors: list[ErrorDetails], lines: dict[Loc, int]) -> list[tuple[int, str]]:
    """Every problem as (line, 'field.path: message'), earliest line first, one per field."""
    located = []
    for order, error in enumerate(relevant(errors)):
        where = _locate(error["loc"], lines)
        where = _named_key(error, where, lines)
        field, message = ".".join(str(part) for part in where) or "(top level)", reason(error)
        if not where and (inner := _TEXT_PATH.match(message)) is not None:
            # the whole-file check of the texts (a control character) names the key itself
            where = _locate(_loc_of(inner[1]), lines)
            field, message = (inner[1], message[len(inner[0]) :]) if where else (field, message)
        located.append((lines[where], order, where, field, message))
    located.sort()
    problems: dict[Loc, tuple[int, str]] = {}
    for line, _, where, field, message in located:
        problems.setdefault(where, (line, f"{field}: {message}"))
    return list(problems.values())


_TEXT_PATH = re.compile(r"([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+|\[\d+\])*): ")


def _loc_of(field: str) -> Loc:
    """`categories.O1.should_not[0]` as a pydantic location."""
    loc: list[str | int] = []
    for name, *indices in (part.replace("]", "").split("[") for part in field.split(".")):
        loc += [name, *map(int, indices)]
    return tuple(loc)


def _locate(loc: tuple[str | int, ...], lines: dict[Loc, int]) -> Loc:
    """The longest path of real document keys in `loc`, skipping pydantic's union tags. A key
    the models normalised (a category code written `o3`, validated as `O3`) is found as
    written."""
    where: Loc = ()
    for part in loc:
        if (*where, part) in lines:
            where = (*where, part)
        elif isinstance(part, str):
            written = _written_as(where, part, lines)
            if written is not None:
                where = (*where, written)
    return where


def _written_as(where: Loc, key: str, lines: dict[Loc, int]) -> str | None:
    """The key under `where` that is `key` in another case, if there is exactly one."""
    found = [
        path[-1]
        for path in lines
        if len(path) == len(where) + 1
        and path[:-1] == where
        and isinstance(path[-1], str)
        and path[-1].casefold() == key.casefold()
    ]
    return found[0] if len(found) == 1 and isinstance(found[0], str) else None


def _named_key(error: ErrorDetails, where: Loc, lines: dict[Loc, int]) -> Loc:
    """A mapping-level error that quotes one of the mapping's keys points at that key."""
    value = error.get("input")
    if error["type"] == "value_error" and isinstance(value, dict):
        message = reason(error)
        for key in value:
            # A key the models normalised (`o3` → `O3`) is named as normalised.
            named = repr(key) in message or message.casefold().startswith(f"{key} ".casefold())
            if isinstance(key, str) and named and (*where, key) in lines:
                return (*where, key)
    return where
