"""Policy validation errors in plain words: one pydantic error → one reason, with a suggestion.

The loader (`moderator.policy.load`) puts each reason after `file:line: field.path: `. What a
location expects is read from the policy models themselves (`PolicyFile` and the models its
fields hold), so the words follow the schema:

- a value of the wrong type: `must be a list of strings, not the string 'Show ...'`;
- a key the schema does not have: `unknown key 'blok_at'; did you mean 'block_at'?` (the closest
  valid key, else the list of valid keys there);
- a value outside a closed set: `'allow' is not one of default, allowed, sensitive; did you mean
  'allowed'?`;
- a number out of range: `must be from 0 to 1, not 1.5`.

Messages the policy models raise themselves (`ValueError`s) are already plain and pass through.
Pure: no I/O.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Le
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from moderator.events.verdict import code_of
from moderator.policy.document import ACTION_ORDER, PolicyFile

Loc = tuple[str | int, ...]

# What the keys of each mapping field are, by (model, field): "a mapping keyed by ...".
_MAPPING_KEYS: dict[tuple[str, str], str] = {
    ("PolicyFile", "categories"): "category codes (O1..O9)",
    ("SurfaceOverride", "categories"): "category codes (O1..O9)",
    ("DsaMapping", "categories"): "category codes (O1..O9, NA)",
    ("PolicyFile", "surfaces"): "surface names",
    ("PolicyFile", "on_error"): "error codes",
    ("SurfaceOverride", "on_error"): "error codes",
}
_SHORT = 40  # characters of a value quoted back


@dataclass(frozen=True)
class _Spot:
    """What the schema says about one location: the expected type, and the model field that
    holds it (for ranges and mapping keys), when the location is inside the schema."""

    annotation: Any
    field: FieldInfo | None = None
    owner: type[BaseModel] | None = None  # the model that declares `field`
    name: str | None = None  # `field`'s name in `owner`


def reason(error: ErrorDetails) -> str:
    """One pydantic error on a policy file, in plain words (without the field path)."""
    kind = error["type"]
    loc = tuple(error["loc"])
    value = error.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "missing":
        return f"missing key {str(loc[-1])!r}" if loc else "a required key is missing"
    if kind in ("value_error", "assertion_error"):
        return error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    spot = _spot(loc)
    if kind == "literal_error":
        return _not_one_of(loc, spot, value)
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bounds = _range(spot)
        if bounds is None:
            return error["msg"].replace("Input should be", "must be", 1)
        return f"must be {bounds}, not {_given(value)}"
    if spot is not None and (kind.endswith("_type") or kind.endswith("_parsing")):
        return _wrong_type(loc, spot, value)
    return error["msg"].replace("Input should be", "must be", 1)


def relevant(errors: Sequence[ErrorDetails]) -> list[ErrorDetails]:
    """The errors that say something about the value as written.

    For a value that may take one of several forms (`on_error`: an action, or a mapping of
    error codes to actions), pydantic reports every form that failed; only the form of the
    value's own shape is kept (a mapping is judged as a mapping). When none has that shape,
    all are kept.
    """
    kept = [e for e in errors if _shape_fits(tuple(e["loc"]), e.get("input"))]
    return kept or list(errors)


def suggestion(word: str, choices: Sequence[str]) -> str | None:
    """The choice `word` most likely means: the same in another case, else the closest."""
    for choice in choices:
        if choice.casefold() == word.casefold():
            return choice
    near = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return near[0] if near else None


# -- the kinds of error ------------------------------------------------------------------------


def _unknown_key(loc: Loc) -> str:
    key = str(loc[-1]) if loc else ""
    spot = _spot(loc[:-1])
    model = _model_of(spot.annotation) if spot is not None else None
    if model is None:
        return f"unknown key {_short(key)!r}"
    keys = _keys(model)
    if "categories" in keys and code_of(key) not in (None, "NA"):
        return f"unknown key {_short(key)!r}: a category's settings go under 'categories'"
    near = suggestion(key, keys)
    if near is not None:
        return f"unknown key {_short(key)!r}; did you mean {near!r}?"
    return f"unknown key {_short(key)!r}; the keys here are {', '.join(keys)}"


def _not_one_of(loc: Loc, spot: _Spot | None, value: Any) -> str:
    choices = _literal_values(spot.annotation) if spot is not None else []
    if spot is None or not choices:
        return f"must be one of the allowed values, not {_given(value)}"
    others = _other_forms(loc)
    if not isinstance(value, str):
        return f"must be {' or '.join([_expected(spot), *others])}, not {_given(value)}"
    text = f"{_short(value)!r} is not one of {', '.join(choices)}"
    near = suggestion(value, choices)
    return f"{text}; did you mean {near!r}?" if near is not None else text


def _wrong_type(loc: Loc, spot: _Spot, value: Any) -> str:
    expected = " or ".join([_expected(spot), *_other_forms(loc)])
    text = f"must be {expected}, not {_given(value)}"
    if isinstance(value, str) and _is_list(spot.annotation):
        text += " (write each item on its own line, starting with '- ')"
    elif isinstance(value, bool) and _bare(spot.annotation) is str:
        text += " (quote it: YAML reads yes, no, on, off, true and false as true or false)"
    elif isinstance(value, int | float) and _bare(spot.annotation) is str:
        text += " (quote it to make it a string)"
    return text


# -- the schema --------------------------------------------------------------------------------


def _spot(loc: Loc) -> _Spot | None:
    """What the schema expects at `loc` (a pydantic error location, union tags included);
    None when the location is outside the schema."""
    spot = _Spot(PolicyFile)
    for part in loc:
        ann = _bare(spot.annotation)
        model = _model_of(ann)
        if model is not None:
            name = _field_name(model, part)
            if name is None:
                return None
            field = model.model_fields[name]
            spot = _Spot(field.annotation, field, model, name)
            continue
        branches = _branches(ann)
        if len(branches) > 1:
            branch = next((b for b in branches if _tag_matches(b, part)), None)
            if branch is None:
                return None
            spot = _Spot(branch, spot.field, spot.owner, spot.name)
            continue
        origin = get_origin(ann)
        if origin is dict and isinstance(part, str):
            spot = _Spot(get_args(ann)[1])
        elif origin in (tuple, list) and isinstance(part, int):
            spot = _Spot(get_args(ann)[0])
        else:
            return None
    return spot


def _bare(ann: Any) -> Any:
    """The annotation without `Annotated[...]` and without its `None` alternative."""
    while get_origin(ann) is Annotated:
        ann = get_args(ann)[0]
    branches = _branches(ann)
    if len(branches) == 1 and branches[0] is not ann:
        return _bare(branches[0])
    return ann


def _branches(ann: Any) -> list[Any]:
    """The alternatives of a union, `None` left out; [ann] for anything else."""
    if get_origin(ann) in (Union, types.UnionType):
        return [a for a in get_args(ann) if a is not type(None)]
    return [ann]


def _model_of(ann: Any) -> type[BaseModel] | None:
    ann = _bare(ann)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _field_name(model: type[BaseModel], part: str | int) -> str | None:
    for name, field in model.model_fields.items():
        if part in (name, field.alias):
            return name
    return None


def _keys(model: type[BaseModel]) -> list[str]:
    """A model's keys as a policy file writes them (aliases where there are), sorted."""
    return sorted(field.alias or name for name, field in model.model_fields.items())


def _tag_matches(branch: Any, part: str | int) -> bool:
    """Whether `part` is pydantic's tag for this union branch in an error location."""
    return isinstance(part, str) and part.startswith(_tag_prefix(branch))


def _tag_prefix(branch: Any) -> str:
    branch = _bare(branch)
    origin = get_origin(branch)
    if origin is Literal:
        return "literal["
    if origin is not None:
        return f"{origin.__name__}["
    return getattr(branch, "__name__", repr(branch))


def _union_at(loc: Loc) -> list[Any]:
    """The forms a value may take when `loc` ends in a union tag (the error is about the
    value's form itself, not something inside it); [] otherwise."""
    if not loc:
        return []
    spot = _spot(loc[:-1])
    branches = _branches(_bare(spot.annotation)) if spot is not None else []
    return branches if len(branches) > 1 and _tag_matches_any(branches, loc[-1]) else []


def _tag_matches_any(branches: list[Any], part: str | int) -> bool:
    return any(_tag_matches(b, part) for b in branches)


def _other_forms(loc: Loc) -> list[str]:
    """The other forms of a union-typed value, in words, for an error about one of them."""
    spot = _spot(loc[:-1]) if loc else None
    if spot is None:
        return []
    return [
        _expected(_Spot(b, spot.field, spot.owner, spot.name))
        for b in _union_at(loc)
        if not _tag_matches(b, loc[-1])
    ]


def _shape_fits(loc: Loc, value: Any) -> bool:
    """False for an error about one form of a union-typed value when the value has another
    shape (a mapping judged as an action, or an action judged as a mapping)."""
    spot = _spot(loc) if _union_at(loc) else None
    if spot is None:
        return True
    branch = _bare(spot.annotation)
    mapping = get_origin(branch) is dict or _model_of(branch) is not None
    listing = _is_list(branch)
    if isinstance(value, dict):
        return mapping
    if isinstance(value, list | tuple):
        return listing
    return not mapping and not listing


def _is_list(ann: Any) -> bool:
    return get_origin(_bare(ann)) in (tuple, list)


def _literal_values(ann: Any) -> list[str]:
    """A closed set's values; actions from the mildest (their order in a `Literal` is not
    reliable: typing hands back an equal union made earlier, `Decision | None` say)."""
    ann = _bare(ann)
    values = [str(v) for v in get_args(ann)] if get_origin(ann) is Literal else []
    if values and set(values) <= set(ACTION_ORDER):
        values.sort(key=ACTION_ORDER.__getitem__)
    return values


def _expected(spot: _Spot) -> str:
    """What a location expects, in words: "a list of strings", "one of block, review, allow"."""
    ann = _bare(spot.annotation)
    branches = _branches(ann)
    if len(branches) > 1:
        return " or ".join(_expected(_Spot(b, spot.field, spot.owner, spot.name)) for b in branches)
    values = _literal_values(ann)
    if values:
        return values[0] if len(values) == 1 else "one of " + ", ".join(values)
    model = _model_of(ann)
    if model is not None:
        return f"a mapping (keys: {', '.join(_keys(model))})"
    origin = get_origin(ann)
    if origin is dict:
        where = (spot.owner.__name__, spot.name) if spot.owner and spot.name else None
        keys = _MAPPING_KEYS.get(where) if where else None
        return f"a mapping keyed by {keys}" if keys else "a mapping"
    if origin in (tuple, list):
        return f"a list of {_plural(get_args(ann)[0])}"
    if ann is float:
        bounds = _range(spot)
        return f"a number {bounds}" if bounds else "a number"
    return {str: "a string", bool: "true or false", int: "a whole number"}.get(ann, "another value")


def _plural(ann: Any) -> str:
    return {str: "strings", float: "numbers", int: "whole numbers"}.get(_bare(ann), "values")


def _range(spot: _Spot | None) -> str | None:
    low = high = None
    for item in spot.field.metadata if spot is not None and spot.field is not None else ():
        if isinstance(item, Ge):
            low = item.ge
        elif isinstance(item, Le):
            high = item.le
    if low is not None and high is not None:
        return f"from {low:g} to {high:g}"
    if low is not None:
        return f"at least {low:g}"
    if high is not None:
        return f"at most {high:g}"
    return None


def _given(value: Any) -> str:
    """A value as YAML wrote it, in words: "the string 'x'", "the number 5", "a list"."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {_short(value)!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, date):
        return f"the date {value.isoformat()}"
    return f"a {type(value).__name__}"


def _short(text: str) -> str:
    return text if len(text) <= _SHORT else text[: _SHORT - 3] + "..."
