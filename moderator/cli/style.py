"""One style for every command's `--help` and for the flags several commands share.

Every command and group is added with `add_command`: a description, wrapped to the terminal,
and an `examples:` section kept as written. The flags that mean the same thing everywhere
(`--config FILE`, `--policies DIR`, `--engine E`, `--model M`, `--output FILE`, `--tenant T`,
`--format a|b`) are added by the helpers below, so their names, metavars and help cannot drift
apart. docs/cli.md describes the conventions. Cheap to import: the standard library only.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from moderator.settings import Settings

ENGINES = ("nudenet", "transformers", "lmdeploy", "openai", "fake")
"""The `engine.kind` values (moderator/engine/factory.py builds them)."""

CONFIG_HELP = "YAML settings file (MODERATOR_* environment variables and flags override it)"
POLICIES_HELP = "policy directory (sets policies.dir)"
ENGINE_HELP = (
    "sets engine.kind: nudenet (a nudity detector on CPU, O3 and O4 only), transformers (a "
    "guard-model checkpoint run in this process), lmdeploy (a QwenGuard checkpoint on "
    "TurboMind, CUDA only), openai (a guard model behind an OpenAI-compatible server), fake "
    "(random smoke-test verdicts); docs/engines.md"
)
MODEL_HELP = (
    "sets engine.model: the checkpoint directory (transformers, lmdeploy) or the served model "
    "name (openai)"
)
OUTPUT_HELP = "write to FILE instead of stdout (an existing FILE is replaced)"
TENANT_METAVAR = "T"
EXAMPLES_HEADING = "examples:"


class HelpFormatter(argparse.HelpFormatter):
    """argparse's layout, except for free text: a paragraph (text between blank lines) with an
    indented line (examples, a shell recipe) is printed as written; the others are re-wrapped
    to the terminal's width."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks = []
        for paragraph in text.strip("\n").split("\n\n"):
            lines = paragraph.splitlines()
            if any(line[:1] in (" ", "\t") for line in lines):
                blocks.append("\n".join(indent + line if line else line for line in lines))
            else:
                words = " ".join(paragraph.split())
                blocks.append(
                    textwrap.fill(words, width, initial_indent=indent, subsequent_indent=indent)
                )
        return "\n\n".join(blocks)


def examples(*lines: str) -> str:
    """An `examples:` section: one command line each, indented, printed as written."""
    return "\n".join([EXAMPLES_HEADING, *(f"  {line}" for line in lines)])


def add_command(
    sub: Any,
    name: str,
    *,
    help: str,  # argparse's own name for it
    description: str,
    epilog: str,
) -> argparse.ArgumentParser:
    """A command (or group) on `sub` (argparse sub-parsers) in the shared help style. `epilog`
    starts with an `examples:` section (see `examples`); more paragraphs may follow it."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=HelpFormatter,
    )
    return parser


def add_group(sub: Any, name: str, *, help: str, description: str, epilog: str, dest: str) -> Any:
    """A command group: `add_command` plus its own required sub-parsers (returned)."""
    group = add_command(sub, name, help=help, description=description, epilog=epilog)
    return group.add_subparsers(dest=dest, required=True, metavar="COMMAND")


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)


def add_policies_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policies", type=Path, metavar="DIR", help=POLICIES_HELP)


def policies_left_unset(args: argparse.Namespace, settings: Settings) -> bool:
    """Whether `policies.dir` is at its default: no `--policies`, no setting naming another."""
    from moderator.settings import PolicySettings

    default = PolicySettings().dir
    return getattr(args, "policies", None) is None and settings.policies.dir == default


def add_engine_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=ENGINES, metavar="E", help=ENGINE_HELP)


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """`--engine E` and `--model M`."""
    add_engine_flag(parser)
    parser.add_argument("--model", metavar="M", help=MODEL_HELP)


def add_output_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, metavar="FILE", help=OUTPUT_HELP)


def add_format_flag(
    parser: argparse.ArgumentParser, choices: Sequence[str], *, default: str, help: str
) -> None:
    """`--format a|b`: the choices in the metavar; `help` says what each gives."""
    parser.add_argument(
        "--format",
        choices=tuple(choices),
        default=default,
        metavar="|".join(choices),
        help=f"{help} (default: {default})",
    )


class Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), pointing at --help for the usage.

    Each parser in the tree reports the arguments it was left with itself, so a mistyped flag
    names the command it was given to (`moderator scan: error: unrecognized arguments: ...`),
    not `moderator`: argparse would pass a sub-command's leftovers up to the top."""

    def parse_known_args(  # type: ignore[override]  # same call; leftovers are an error
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        # Python 3.11's argparse drops a `--` given as an option's one value (`--config=--`),
        # leaving the flag an empty list: a usage error here, not a list where a value belongs.
        if action.option_strings and action.nargs is None and arg_strings == ["--"]:
            self.error(f"argument {'/'.join(action.option_strings)}: expected one argument")
        return super()._get_values(action, arg_strings)


def object_key_value(text: str) -> str:
    """An argparse type: an S3 object key (S3 has none that is empty)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an object key must not be empty")
    return text


def tenant_id_value(text: str) -> str:
    """An argparse type: a tenant id an event could carry (a usage error otherwise)."""
    from moderator.events.upload import tenant_id_problem

    problem = tenant_id_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text
