"""Settings errors as one line: the key, the problem in plain words, and where the value came from.

`moderator.settings.load_settings` reads the YAML file, the MODERATOR_* environment and the CLI
overrides, and hands pydantic's errors here. A line names only a source that actually holds the
key: the file (`in FILE`), the environment variable that is set (`from environment NAME`, a JSON
map or list in a parent variable included) or the command line. An unknown key gets the closest
valid key of its section (`did you mean 'kafka'?`), else the list of valid keys there. A section's
rule raising `NAME: problem` is reported as being about `section.NAME` (`named_key`); a rule about
two keys (`TwoKeyError`) is reported about the second when only that one was set (`about_key_set`).
pydantic's union member tags (`kafka.client.KEY.str`) are left out of keys (`untagged`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, cast, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import SettingsError

from moderator.masking import mask_passwords
from moderator.policy.messages import suggestion

ENV_PREFIX = "MODERATOR_"
_NESTED = "__"
_MISSING = object()


@dataclass(frozen=True)
class Sources:
    """What each settings source holds, highest precedence last: the YAML file's contents, the
    environment, the CLI overrides (dotted keys, None values dropped)."""

    config_file: Path | None
    file_values: Mapping[str, Any]
    environ: Mapping[str, str]
    overrides: Mapping[str, Any]


class TwoKeyError(ValueError):
    """A section's rule broken by two of its keys together, worded about each of them.

    Its message is the one about the first key (`first: problem`), so code reading it directly
    sees what it always did; `validation_line` words it about the second key instead when only
    that one was set, so the line names the key the user actually wrote.
    """

    def __init__(self, first: str, first_problem: str, second: str, second_problem: str) -> None:
        super().__init__(f"{first}: {first_problem}")
        self.first = first
        self.second = second
        self.about_second = f"{second}: {second_problem}"


def validation_line(exc: ValidationError, model: type[BaseModel], sources: Sources) -> str:
    """The first error of `exc` as `configuration error: key: problem (where)`, then how many
    more problems there are, worded as the policy loader's one-line form words them."""
    errors = [untagged(e, model) for e in exc.errors()]
    err = named_key(about_key_set(_one_per_key(errors), sources), model)
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "settings"
    # When no source set the key named (a two-key rule whose keys no source set one by one),
    # every source of the section the rule was raised for is named instead.
    found = _where(loc, sources) or _where(tuple(errors[0]["loc"]), sources)
    where = f" ({'; '.join(found)})" if found else ""
    others = len({tuple(e["loc"]) for e in errors}) - 1
    more = f" (and {others} more problem{'' if others == 1 else 's'})" if others > 0 else ""
    return f"configuration error: {key}: {field_problem(err, model)}{where}{more}"


def untagged(err: ErrorDetails, model: type[BaseModel]) -> ErrorDetails:
    """`err` without pydantic's union member tags in its location (the `str` of
    `kafka.client.KEY.str`): they name no key anyone wrote."""
    kept: list[str | int] = []
    annotation: Any = model
    for part in err["loc"]:
        inner = _optional_inner(annotation)
        members = get_args(inner) if get_origin(inner) in (Union, UnionType) else ()
        tagged = next((m for m in members if _is_tag(m, part)), None)
        if tagged is not None:
            annotation = tagged
            continue
        kept.append(part)
        annotation = _step(annotation, part)
    return cast(ErrorDetails, {**err, "loc": tuple(kept)})


def _is_tag(member: Any, part: str | int) -> bool:
    """Whether `part` is the tag pydantic puts in an error's location for this union member
    (`str`, `int`, `literal['a','b']`, `dict[str,int]`, a model's class name)."""
    if not isinstance(part, str):
        return False
    origin = get_origin(member)
    if origin is None:
        return part == getattr(member, "__name__", None)
    return part.startswith("literal[" if origin is Literal else f"{origin.__name__}[")


def _one_per_key(errors: list[ErrorDetails]) -> ErrorDetails:
    """The first error, worded for every union member that refused its value: `Input should
    be a valid string, a valid integer or a valid boolean`."""
    first = errors[0]
    same = [e["msg"] for e in errors if e["loc"] == first["loc"]]
    lead = "Input should be "
    if len(same) < 2 or not all(msg.startswith(lead) for msg in same):
        return first
    forms = [msg.removeprefix(lead) for msg in same]
    return cast(ErrorDetails, {**first, "msg": lead + ", ".join(forms[:-1]) + " or " + forms[-1]})


_JSON_HINT = (
    'maps and lists are written as JSON in the environment, e.g. {"key": "value"} or ["a", "b"]'
)


def env_problem(
    exc: SettingsError, environ: Mapping[str, str], model: type[BaseModel] | None = None
) -> str:
    """One line for a MODERATOR_* value pydantic-settings could not even parse: a map or a
    list (it reads those as JSON) that is not JSON. Given the settings `model`, the line names
    the one variable to blame (`tenancy.upload_buckets: not valid JSON`) when there is one."""
    match = re.search(r'field "([^"]+)"', str(exc))
    field = match.group(1) if match else "settings"
    prefix = ENV_PREFIX + field.upper()
    names = sorted(
        name
        for name in environ
        if name.upper() == prefix or name.upper().startswith(prefix + _NESTED)
    )
    culprits = [] if model is None else _not_json(model, names, environ)
    if len(culprits) == 1:
        key, name = culprits[0]
        return f"configuration error: {key}: not valid JSON (from environment {name}); {_JSON_HINT}"
    shown = [name for _, name in culprits] or names
    where = f" (from environment {', '.join(shown)})" if shown else ""
    return f"configuration error: {field}: a value is not valid JSON{where}; {_JSON_HINT}"


def _not_json(
    model: type[BaseModel], names: list[str], environ: Mapping[str, str]
) -> list[tuple[str, str]]:
    """(dotted key, variable) for each of `names` that sets a map, a list or a section (read
    as JSON) to something that is not JSON."""
    culprits = []
    for name in names:
        path = name[len(ENV_PREFIX) :].lower().split(_NESTED)
        if not _is_complex(_annotation_at(model, path)):
            continue
        try:
            json.loads(environ[name])
        except ValueError:
            culprits.append((".".join(path), name))
    return culprits


def _annotation_at(model: type[BaseModel], path: list[str]) -> Any:
    """The type of the setting at `path` (a key of a map takes the map's value type); None when
    `path` names no setting."""
    annotation: Any = model
    for part in path:
        annotation = _step(annotation, part)
    return annotation


def _step(annotation: Any, part: str | int) -> Any:
    """The type at `part` inside a value of type `annotation`; None when it is not known."""
    annotation = _optional_inner(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return None if field is None else field.annotation
    origin = get_origin(annotation)
    if origin in (dict, Mapping):
        return get_args(annotation)[1]
    if origin in (list, tuple) and isinstance(part, int):
        return get_args(annotation)[0]
    return None


def _optional_inner(annotation: Any) -> Any:
    """`X | None` → X; anything else as it is."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _is_complex(annotation: Any) -> bool:
    """Whether pydantic-settings reads a value of this type from the environment as JSON."""
    annotation = _optional_inner(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return get_origin(annotation) in (dict, list, tuple, set, frozenset, Mapping)


def about_key_set(err: ErrorDetails, sources: Sources) -> ErrorDetails:
    """`err` worded about the second key of a two-key rule (`TwoKeyError`) when no source set
    the first and one set the second: the other is a default the user never touched. Set both
    or neither, the rule keeps naming the first. Other errors are returned as they are."""
    rule = err.get("ctx", {}).get("error")
    if not isinstance(rule, TwoKeyError):
        return err
    section = tuple(err["loc"])
    if _where((*section, rule.first), sources) or not _where((*section, rule.second), sources):
        return err
    return cast(ErrorDetails, {**err, "msg": rule.about_second})


def named_key(err: ErrorDetails, model: type[BaseModel]) -> ErrorDetails:
    """`err` with the key its message is about moved into its location: a section's rule (or a
    map's check) raising `NAME: problem`, NAME a key of that section (or of the map given), is
    reported as `section.NAME: problem`. Other errors are returned as they are."""
    loc = tuple(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    given = err.get("input")
    while (match := _NAMED.match(msg)) is not None and _has_key(model, loc, match["name"], given):
        loc = (*loc, match["name"])
        msg = msg[match.end() :]
        given = _lookup(given, (match["name"],))
    if loc == tuple(err["loc"]):
        return err
    return cast(ErrorDetails, {**err, "loc": loc, "msg": msg})


_NAMED = re.compile(r"(?P<name>[A-Za-z0-9_][A-Za-z0-9_.-]*): ")


def _has_key(model: type[BaseModel], loc: tuple[str | int, ...], name: str, given: Any) -> bool:
    """Whether `name` is a key at `loc`: a field of the section there, or a key of the map
    `given` (the value the error was raised for)."""
    section = _section(model, loc)
    if section is not None:
        return name in section.model_fields
    return isinstance(given, Mapping) and name in given


def scalar_section(model: type[BaseModel], values: Mapping[str, Any]) -> tuple[str, Any] | None:
    """(dotted key, value) of the first section of `model` given as something other than a
    mapping in `values` (`engine: openai`); None when every section given is a mapping."""
    for name, value in values.items():
        section = _section(model, (name,))
        if section is None or value is None:
            continue
        if not isinstance(value, Mapping):
            return name, value
        inner = scalar_section(section, value)
        if inner is not None:
            return f"{name}.{inner[0]}", inner[1]
    return None


def section_problem(value: Any) -> str:
    """What is wrong with a section given as `value`, which is not a mapping."""
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return f"is a section, a mapping of keys, not {shown}"


# Settings an earlier release accepted, by dotted key, and why each went: a file that still
# sets one is told so, so that an upgrade says what to delete and that deleting it is safe.
_WHY = "nothing read it: the supported architectures are transformers' own"
REMOVED: dict[str, str] = {"engine.transformers.trust_remote_code": _WHY}


def field_problem(err: ErrorDetails, model: type[BaseModel]) -> str:
    """One validation error of `model` in words: a removed key with why it went, an unknown
    key with the key it probably meant (or the keys there), else pydantic's message."""
    loc = tuple(err["loc"])
    if err["type"] == "model_type" and _section(model, loc) is not None:
        return section_problem(err["input"])
    removed = REMOVED.get(".".join(str(part) for part in loc))
    if err["type"] == "extra_forbidden" and removed is not None:
        return f"removed in an earlier release ({removed}); delete it"
    if err["type"] == "extra_forbidden" and loc:
        section = _section(model, loc[:-1])
        if section is not None:
            keys = sorted(section.model_fields)
            near = suggestion(str(loc[-1]), keys)
            if near is not None:
                return f"unknown key; did you mean {near!r}?"
            return f"unknown key; the keys here are {', '.join(keys)}"
    return mask_passwords(" ".join(err["msg"].removeprefix("Value error, ").split()))


def _section(model: type[BaseModel], path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The settings model at `path` (a section such as `kafka.topics`); None for anything else."""
    for part in path:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


# -- where a value came from -------------------------------------------------------------------


def _where(loc: tuple[str | int, ...], sources: Sources) -> list[str]:
    """The sources holding the value at `loc`, in words. The one that wins (CLI over environment
    over file) for a single value; each of them for a section, whose values they merge."""
    if not loc:
        return []
    held: list[tuple[str, Any]] = []  # (words, the value there), lowest precedence first
    if sources.config_file is not None:
        value = _lookup(sources.file_values, loc)
        if value is not _MISSING:
            held.append((f"in {sources.config_file}", value))
    held += _env_holding(loc, sources.environ)
    for dotted, value in sources.overrides.items():
        found = _lookup(_nest_one(dotted, value), loc)
        if found is not _MISSING:
            held.append(("from the command line", found))
            break
    if held and isinstance(held[-1][1], Mapping):
        return [words for words, _ in reversed(held)]
    return [words for words, _ in held[-1:]]


def _env_holding(loc: tuple[str | int, ...], environ: Mapping[str, str]) -> list[tuple[str, Any]]:
    """The MODERATOR_* variables that set `loc`: the most specific one setting it or a parent
    (a JSON map or list), and, for a section, those setting something inside it. pydantic-settings
    matches names in any case."""
    wanted = [str(p).lower() for p in loc]
    best: tuple[int, str, Any] | None = None
    inside: list[tuple[str, Any]] = []
    for name, raw in sorted(environ.items()):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split(_NESTED)
        if len(path) > len(loc):
            if path[: len(loc)] == wanted:
                inside.append((f"from environment {name}", {}))
            continue
        if path != wanted[: len(path)]:
            continue
        try:
            value = _lookup(json.loads(raw), loc[len(path) :])
        except ValueError:  # plain text: the value itself, nothing inside it
            value = raw if len(path) == len(loc) else _MISSING
        if value is not _MISSING and (best is None or len(path) > best[0]):
            best = (len(path), f"from environment {name}", value)
    return ([] if best is None else [(best[1], best[2])]) + inside


def _nest_one(dotted: str, value: Any) -> Any:
    """`("engine.kind", "fake")` → `{"engine": {"kind": "fake"}}`."""
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def _lookup(tree: Any, loc: tuple[str | int, ...]) -> Any:
    """The value at `loc` in nested mappings and lists; _MISSING when it is not there."""
    node = tree
    for part in loc:
        inside = isinstance(node, Mapping) and part in node
        if inside or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            node = node[part]
        else:
            return _MISSING
    return node


OTHER_VARIABLES = frozenset({"DSA_PUID_SALT", "KAFKA_JARS", "FUZZ_EXAMPLES", "PODMAN_ROOT"})
"""MODERATOR_* variables that are not settings: the DSA PUID salt (`audit export-dsa`), the
Kafka jars folder of the development broker, and two knobs of the test suite."""


def unknown_environment(model: type[BaseModel], environ: Mapping[str, str]) -> list[str]:
    """One line per MODERATOR_* variable whose first part names no section or key of `model`:
    the settings loader ignores those (an unknown key below a section is an error there), so a
    typo would go unnoticed. The line says which setting it probably meant."""
    fields = list(model.model_fields)
    lines = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :]
        first = rest.lower().split(_NESTED)[0]
        if first in fields or rest.upper() in OTHER_VARIABLES:
            continue
        lines.append(f"{name} is not a setting and is ignored: {_meant(first, rest, fields)}")
    return lines


def _meant(first: str, rest: str, fields: list[str]) -> str:
    section = next((f for f in fields if first.startswith(f + "_")), None)
    if section is not None:  # MODERATOR_KAFKA_BOOTSTRAP_SERVERS: one underscore for two
        below = rest[len(section) + 1 :].upper()
        return f"nested keys take '__': did you mean {ENV_PREFIX}{section.upper()}__{below}?"
    near = suggestion(first, fields)
    if near is not None:
        below = rest[len(first) :].upper()
        return f"did you mean {ENV_PREFIX}{near.upper()}{below}?"
    return f"the settings have no section or key {first!r}"
