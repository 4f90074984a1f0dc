"""The policy file format (schema version 1), as pydantic models. Pure: no I/O here.

A tenant file overrides its base (`extends`, `default` unless it is the default policy itself).
Every field is optional in a tenant file; the merged result must be complete. The category keys
are the taxonomy codes `O1`..`O9`, in either case (`o3` is read as `O3`); `NA` ("None applying")
takes its thresholds and action from `none_applying`. docs/policies.md documents every field.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from moderator.errors import DEAD_LETTER_ONLY, SECURITY_ERRORS, ErrorCode
from moderator.events.dsa_categories import STATEMENT_CATEGORIES, STATEMENT_CATEGORY_PREFIX
from moderator.events.verdict import code_of
from moderator.text import first_unsafe

SCHEMA_VERSION = 1
CODES: tuple[str, ...] = ("O1", "O2", "O3", "O4", "O5", "O6", "O7", "O8", "O9")

Mode = Literal["default", "allowed", "sensitive"]
Action = Literal["block", "review", "allow"]
ACTION_ORDER: dict[str, int] = {"allow": 0, "review": 1, "block": 2}
SURFACE_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
# SURFACE_PATTERN in words, for the error that refuses a name.
SURFACE_RULE = (
    "use 1 to 64 lower-case letters, digits, '_', '.' and '-', starting with a letter or digit"
)
# A number as YAML writes one: `true` or "0.5" is refused, not read as 1.0 or 0.5.
Score = Annotated[float, Strict()]


def _category_code(key: str) -> str:
    if key not in CODES:
        raise ValueError(_unknown_code(key, "O1..O9 (NA is none_applying)"))
    return key


# A `categories` key. Checked key by key (not after the whole mapping has validated), so that
# an unknown code is reported along with the problems in the other categories' settings.
CategoryKey = Annotated[str, AfterValidator(_category_code)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Thresholds(_Strict):
    """Score thresholds: with a score, >= block_at blocks, >= review_at reviews, else allow."""

    block_at: Score | None = Field(default=None, ge=0.0, le=1.0)
    review_at: Score | None = Field(default=None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if (
            self.block_at is not None
            and self.review_at is not None
            and self.review_at > self.block_at
        ):
            raise ValueError(
                f"review_at {self.review_at} must not be above block_at {self.block_at}"
            )
        return self


class CategoryPolicy(Thresholds):
    """One category's state for the model and its action when the model rates it Unsafe."""

    mode: Mode | None = None
    action: Action | None = None
    should_not: tuple[str, ...] | None = None
    can: tuple[str, ...] | None = None
    # The texts for the three states; normally only default.yaml sets them.
    allowed_text: str | None = None
    sensitive_text: str | None = None

    @field_validator("should_not", "can")
    @classmethod
    def _bullets(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and any(not b.strip() or "\n" in b for b in value):
            raise ValueError("bullets must be non-empty single lines")
        return value


class NoneApplying(Thresholds):
    """`NA: None applying`: an Unsafe rating that names no category, and tenant-wide thresholds."""

    action: Action | None = None


class Locations(_Strict):
    """Where this tenant's events may point. Unset fields follow `tenancy` (see README)."""

    buckets: tuple[str, ...] | None = None
    prefixes: tuple[str, ...] | None = None


class DsaMapping(_Strict):
    """How decisions map onto DSA statements of reasons (used by `audit export-dsa`)."""

    categories: dict[str, str] = Field(default_factory=dict)
    review_restricts_visibility: StrictBool = False

    @field_validator("categories", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return upper_codes(value, (*CODES, "NA"))

    @field_validator("categories")
    @classmethod
    def _codes(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(CODES) - {"NA"})
        if unknown:
            raise ValueError(_unknown_code(unknown[0], "O1..O9 or NA", na=True))
        for code, category in sorted(value.items()):
            if category not in STATEMENT_CATEGORIES:
                raise ValueError(f"{code} maps to {_statement_problem(category)}")
        return value


class SurfaceOverride(_Strict):
    """Overrides for events whose `context.surface` names this surface."""

    categories: dict[CategoryKey, CategoryPolicy] = Field(default_factory=dict)
    none_applying: NoneApplying | None = None
    on_error: Action | dict[str, Action] | None = None

    @field_validator("categories", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return upper_codes(value, CODES)

    @field_validator("on_error")
    @classmethod
    def _errors(cls, value: Action | dict[str, Action] | None) -> Action | dict[str, Action] | None:
        return _check_on_error(value)


class PolicyFile(_Strict):
    """One YAML file as written (before inheritance is resolved)."""

    schema_version: Literal[1] = Field(default=1, alias="schema")
    extends: str | None = None
    description: str | None = None
    owner: str | None = None
    categories: dict[CategoryKey, CategoryPolicy] = Field(default_factory=dict)
    none_applying: NoneApplying | None = None
    surfaces: dict[str, SurfaceOverride] = Field(default_factory=dict)
    allowed: Locations | None = None
    on_error: Action | dict[str, Action] | None = None
    dsa: DsaMapping | None = None

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _printable(cls, data: Any) -> Any:
        problem = _unprintable(data, ())
        if problem is not None:
            raise ValueError(problem)
        return data

    @field_validator("schema_version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"schema must be the number {SCHEMA_VERSION}")
        return value

    @field_validator("categories", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return upper_codes(value, CODES)

    @field_validator("surfaces", mode="wrap")
    @classmethod
    def _surfaces(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # The names are judged along with the surfaces' bodies, not after them: a category
        # indented under `surfaces:` has a body full of unknown keys, and the name is what
        # explains them.
        names = _name_errors(value)
        try:
            surfaces = handler(value)
        except ValidationError as exc:
            if not names:
                raise
            raise ValidationError.from_exception_data(
                cls.__name__, [*names, *_details(exc)]
            ) from None
        if names:
            raise ValidationError.from_exception_data(cls.__name__, names)
        return surfaces

    @field_validator("on_error")
    @classmethod
    def _errors(cls, value: Action | dict[str, Action] | None) -> Action | dict[str, Action] | None:
        return _check_on_error(value)


def surface_name_problem(name: str, declared: Collection[str] = ()) -> str | None:
    """Why `name` cannot name a surface (None when it can): the rule spelled out, since a
    surface name is matched exactly against events' `context.surface`. A category code most
    likely sits one level too high (its settings under `surfaces:` itself), so the key it
    belongs under is suggested; otherwise the lower-case form, when that is valid and not
    `declared` already (it would then be a second entry)."""
    if re.fullmatch(SURFACE_PATTERN, name):
        return None
    text = f"invalid surface name {name!r}: {SURFACE_RULE}"
    lower = name.lower()
    if name == "NA":
        text += "; NA is none applying: did you mean none_applying?"
    elif name in CODES:
        text += f"; {name} is a category: did you mean categories.{name}?"
    elif re.fullmatch(SURFACE_PATTERN, lower) and lower not in declared:
        text += f"; did you mean {lower!r}?"
    return text


def _name_errors(value: Any) -> list[InitErrorDetails]:
    """A pydantic error for each key of a `surfaces` mapping that cannot name a surface."""
    if not isinstance(value, dict):
        return []
    errors: list[InitErrorDetails] = []
    for name in value:
        problem = surface_name_problem(name, value) if isinstance(name, str) else None
        if problem is not None:
            error = ValueError(problem)
            errors.append(
                {"type": "value_error", "loc": (name,), "input": name, "ctx": {"error": error}}
            )
    return errors


def _details(exc: ValidationError) -> list[InitErrorDetails]:
    """The errors of `exc` in the form that builds a ValidationError again."""
    details: list[InitErrorDetails] = []
    for error in exc.errors():
        detail: InitErrorDetails = {
            "type": error["type"],
            "loc": error["loc"],
            "input": error["input"],
        }
        if "ctx" in error:
            detail["ctx"] = error["ctx"]
        details.append(detail)
    return details


def _statement_problem(category: str) -> str:
    """Why `category` is not a DSA statement category, with the nearest one when it is close."""
    names = sorted(c.removeprefix(STATEMENT_CATEGORY_PREFIX) for c in STATEMENT_CATEGORIES)
    name = category.removeprefix(STATEMENT_CATEGORY_PREFIX)
    near = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
    hint = (
        f"did you mean {STATEMENT_CATEGORY_PREFIX}{near[0]}?"
        if near
        else "see docs/policies.md for the list"
    )
    return f"{category[:80]!r}, which is not a DSA statement category ({hint})"


def upper_codes(value: Any, codes: tuple[str, ...]) -> Any:
    """A mapping keyed by category codes with the codes in upper case (`o3` → `O3`); other keys
    and other values are left for validation to judge. Two keys naming one code are an error."""
    if not isinstance(value, dict):
        return value
    out: dict[Any, Any] = {}
    written: dict[Any, Any] = {}  # code -> the key that named it first
    for key, item in value.items():
        code = key.upper() if isinstance(key, str) and key.upper() in codes else key
        if code in out:
            raise ValueError(
                f"duplicate category {key!r}: {written[code]} names the same one (codes are "
                "read in either case)"
            )
        out[code] = item
        written[code] = key
    return out


def _unknown_code(key: str, valid: str, *, na: bool = False) -> str:
    """Why `key` is not a category code, with the code it means when it names a category.
    `na`: whether NA is a valid key here."""
    code = code_of(key)
    if code == "NA" and not na:
        return f"{key!r} (None applying) is not set here: use the none_applying key"
    if code is not None:
        return f"unknown category {key!r}: write its code, {code}"
    return f"unknown category {key!r}: use {valid}"


def _check_on_error(value: Action | dict[str, Action] | None) -> Action | dict[str, Action] | None:
    """Known error codes only; security errors can never map to allow."""
    if value is None:
        return None
    mapping = {"default": value} if isinstance(value, str) else value
    codes = {c.value for c in ErrorCode if c not in DEAD_LETTER_ONLY} | {"default"}
    for code, action in mapping.items():
        if code in DEAD_LETTER_ONLY:
            raise ValueError(
                f"{code} never reaches a verdict (the message goes to the dead-letter topic): "
                "on_error cannot decide it"
            )
        if code not in codes:
            near = difflib.get_close_matches(str(code), sorted(codes), n=1, cutoff=0.6)
            hint = f"did you mean {near[0]!r}?" if near else "see docs/errors.md for the codes"
            raise ValueError(f"unknown error code {code!r}; {hint}")
        if action == "allow" and (code == "default" or ErrorCode(code) in SECURITY_ERRORS):
            security = {c.value for c in SECURITY_ERRORS}
            if code != "default":
                raise ValueError(f"{code} is a security error and can never map to allow")
            if isinstance(value, str):  # one action for every error: security errors too
                raise ValueError(
                    "allow for every error would allow the security errors: write a map, "
                    "{default: allow, " + ", ".join(f"{c}: review" for c in sorted(security)) + "}"
                )
            missing = sorted(security - set(mapping))
            if missing:
                raise ValueError(
                    "on_error allows by default: name the security errors it would allow "
                    f"({', '.join(missing)}) with review or block"
                )
    return value


def _unprintable(value: Any, path: tuple[str, ...]) -> str | None:
    """Where a key or text of a policy file holds a control, line-breaking or bidi character
    (a tab or a line break inside a text is fine), and which; None when nothing does. Policy
    texts reach terminals (`policy render`, `explain`) and the model's prompt as they are."""
    where = ".".join(path) or "the file"
    if isinstance(value, str):
        found = first_unsafe(value, "\n\t")
        return None if found is None else f"{where}: holds the control character {found}"
    if isinstance(value, dict):
        for key, item in value.items():
            name = str(key)
            found = first_unsafe(name)
            if found is not None:
                return f"{where}: a key holds the control character {found}"
            problem = _unprintable(item, (*path, name))
            if problem is not None:
                return problem
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            problem = _unprintable(item, (*path[:-1], f"{path[-1]}[{index}]") if path else ())
            if problem is not None:
                return problem
    return None
