"""YAML as moderator reads its files: every key of a mapping given once (PyYAML keeps the last
of two silently, so a setting written twice in one file would take the value further down
without a word), and a file PyYAML refuses told as its line and the parser's reason."""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any

import yaml

_MERGE = "tag:yaml.org,2002:merge"
_BREAKS = re.compile("\r\n|[\n\r\x85\u2028\u2029]")
"""What YAML counts as a line break."""


class DuplicateKey(Exception):
    """A mapping names `key` twice; `line` (1-based) is the second one's."""

    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {key!r} at line {line}")
        self.key = key
        self.line = line


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping; merge keys (`<<`) keep
    PyYAML's meaning (the mapping's own keys override the merged ones)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):  # PyYAML refuses it below, with its line
                continue
            if key in seen:
                raise DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_unique(text: str) -> Any:
    """`yaml.safe_load(text)`, raising DuplicateKey for a key given twice in one mapping (and
    yaml.YAMLError as safe_load does)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  # a SafeLoader


def yaml_problem(exc: yaml.YAMLError, text: str) -> tuple[int | None, str]:
    """(line, "invalid YAML: <the parser's reason>") for `text`, which PyYAML refused; the line
    is None when the parser gave no position."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        words = [" ".join(w.split()) for w in (exc.context, exc.problem) if w]
        return (None if mark is None else mark.line + 1), _invalid(", ".join(words))
    if isinstance(exc, yaml.reader.ReaderError):
        return line_at(text, int(exc.position)), _invalid(str(exc).split("\n", 1)[0])
    return None, "invalid YAML"


def line_at(text: str, index: int) -> int:
    """The 1-based line of `text` that character `index` is on, as YAML counts lines."""
    return len(_BREAKS.findall(text[: max(index, 0)])) + 1


def _invalid(reason: str) -> str:
    return f"invalid YAML: {reason}" if reason else "invalid YAML"
