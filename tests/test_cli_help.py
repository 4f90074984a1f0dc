"""Every command and group explains itself: a description and an `examples:` section in
`--help`, in one layout (moderator/cli/style.py), for the whole parser tree main() uses."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from moderator.cli.main import build_parser
from moderator.cli.style import EXAMPLES_HEADING, HelpFormatter

# `NAME=value ` prefixes before the command (an environment for one command line).
_ENV_PREFIX = re.compile(r"^(?:[A-Z][A-Z0-9_]*=\S+\s+)*")


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the tree with its command path (() for `moderator` itself)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, (*path, name))


TREE = list(walk(build_parser()))
IDS = [" ".join(path) or "moderator" for path, _ in TREE]


def example_lines(epilog: str) -> list[str]:
    """The command lines of the `examples:` section: the indented lines under the heading, up
    to the first line that is not indented."""
    lines = epilog.splitlines()
    assert EXAMPLES_HEADING in lines, epilog
    out = []
    for line in lines[lines.index(EXAMPLES_HEADING) + 1 :]:
        if line and not line.startswith("  "):
            break
        if line.strip():
            out.append(line.strip())
    return out


def test_the_tree_has_every_command() -> None:
    names = set(IDS)
    for expected in ("run", "demo", "dev-stack", "scan", "policy validate", "audit query"):
        assert expected in names
    assert len(TREE) >= 25


@pytest.mark.parametrize(("path", "parser"), TREE, ids=IDS)
def test_every_parser_has_a_description_and_examples(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    assert parser.description and len(parser.description.split()) >= 8, parser.prog
    assert parser.formatter_class is HelpFormatter, parser.prog
    assert parser.epilog and parser.epilog.startswith(EXAMPLES_HEADING), parser.prog
    lines = example_lines(parser.epilog)
    assert lines, parser.prog
    for line in lines:
        assert _ENV_PREFIX.sub("", line).startswith("moderator "), (parser.prog, line)
    # An example of this very command (a group's: of one of its commands).
    command = " ".join(("moderator", *path))
    assert any(_ENV_PREFIX.sub("", line).startswith(command) for line in lines), parser.prog


def test_the_formatter_wraps_prose_and_keeps_indented_lines() -> None:
    text = "word " * 40 + "\n\nexamples:\n  moderator a   --b  c\n  moderator d"
    filled = HelpFormatter("prog", width=40)._fill_text(text, 40, "")
    prose, kept = filled.split("\n\n")
    assert all(len(line) <= 40 for line in prose.splitlines()) and prose.count("\n") >= 4
    assert kept == "examples:\n  moderator a   --b  c\n  moderator d"


SAMPLE = [
    ("run",),
    ("demo",),
    ("scan",),
    ("policy",),
    ("policy", "validate"),
    ("audit", "export-dsa"),
    ("model", "make-tiny"),
    (),
]


@pytest.mark.parametrize("command", SAMPLE, ids=[" ".join(c) or "moderator" for c in SAMPLE])
def test_help_as_a_user_sees_it(command: tuple[str, ...]) -> None:
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run(
        [sys.executable, "-m", "moderator.cli.main", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout
    usage, description = text.split("\n\n", 2)[:2]
    assert usage.startswith("usage: moderator")
    assert len(description.split()) >= 8, text
    assert all(len(line) <= 80 for line in description.splitlines()), description
    examples = text.split(f"\n{EXAMPLES_HEADING}\n", 1)[1]
    first = examples.splitlines()[0]
    assert _ENV_PREFIX.sub("", first.strip()).startswith(" ".join(("moderator", *command)))
