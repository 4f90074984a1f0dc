"""Inheritance and surface overrides: policy files → one tenant's `ResolvedPolicy`. Pure.

The chain runs from the tenant's file through its `extends` (default "default") to
`default.yaml`, the root. Values merge field by field, base first: default, ..., the tenant's
file, then the surface's overrides along the chain in the same order (so a surface override in
a base beats the tenant's top-level value for that surface). A key present in a file overrides,
even with `null` (which clears an inherited threshold); lists (`should_not`, `can`, `buckets`,
`prefixes`) replace wholesale; maps (`on_error`, `dsa.categories`) merge key by key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from pydantic import BaseModel

from moderator.errors import SECURITY_ERRORS
from moderator.events.upload import TENANT_ID_PATTERN
from moderator.events.verdict import CATEGORIES
from moderator.policy.document import CODES, Action, Mode, PolicyFile, SurfaceOverride
from moderator.policy.keys import bucket_name_problem, prefix_problem
from moderator.policy.load import PolicyError
from moderator.policy.messages import suggestion
from moderator.policy.model import ResolvedCategory, ResolvedNoneApplying, ResolvedPolicy

ROOT = "default"
NONE_APPLYING = "NA"
"""The row code of `none_applying` in a decision table."""


class Tenancy(Protocol):
    """How events map to tenants (the `tenancy` settings), as far as default locations need it."""

    @property
    def rule(self) -> str: ...
    @property
    def bucket_map(self) -> Mapping[str, str]: ...
    @property
    def upload_buckets(self) -> Sequence[str]: ...


_TEXTS = ("should_not", "can", "allowed_text", "sensitive_text")

# field -> (value, (name of the file that set it, merge step))
_Fields = dict[str, tuple[Any, tuple[str, int]]]
_Scope = tuple[str, int]  # the surface resolved, and the first merge step of its overrides


def default_locations(tenant_id: str, tenancy: Tenancy) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(buckets, key prefixes) a tenant may use when its policy files say nothing.

    bucket_map rule: the buckets mapped to the tenant, any key in them. key_prefix rule: the
    configured upload buckets, keys under `{tenant_id}/`.
    """
    if tenancy.rule == "bucket_map":
        return tuple(sorted(b for b, t in tenancy.bucket_map.items() if t == tenant_id)), ()
    return tuple(sorted(set(tenancy.upload_buckets))), (f"{tenant_id}/",)


def chain_of(
    files: Mapping[str, PolicyFile], tenant_id: str, *, sources: Mapping[str, Path] | None = None
) -> tuple[str, ...]:
    """File stems from the tenant's to "default". A tenant without a file starts at "default"."""
    if ROOT not in files:
        raise PolicyError(_path(sources, ROOT), None, "no default.yaml (every chain ends there)")
    name = tenant_id if tenant_id in files else ROOT
    chain: list[str] = []
    while True:
        chain.append(name)
        extends = files[name].extends
        if name == ROOT:
            if extends is not None:
                raise PolicyError(
                    _path(sources, name), None, "extends: the default policy cannot extend another"
                )
            return tuple(chain)
        base = ROOT if extends is None else extends
        if base not in files:
            reason = f"extends: unknown base policy {base!r} (no {base}.yaml)"
            near = suggestion(base, _bases(files, sources, chain))
            if near is not None:
                reason += f"; did you mean {near!r}?"
            raise PolicyError(_path(sources, name), None, reason)
        if base in chain:
            cycle = " -> ".join([*chain, base])
            raise PolicyError(_path(sources, name), None, f"extends: inheritance cycle {cycle}")
        name = base


def _bases(
    files: Mapping[str, PolicyFile], sources: Mapping[str, Path] | None, chain: Sequence[str]
) -> list[str]:
    """The policy names an `extends` could mean: every file of the directory (one that failed
    to load still exists, and fixing it is the user's next step), less those already in the
    chain, which would make a cycle."""
    return sorted((set(files) | set(sources or ())) - set(chain))


def surfaces(
    files: Mapping[str, PolicyFile], tenant_id: str, *, sources: Mapping[str, Path] | None = None
) -> tuple[str, ...]:
    """Surfaces with an override anywhere along the tenant's chain, sorted."""
    chain = chain_of(files, tenant_id, sources=sources)
    return tuple(sorted({s for name in chain for s in files[name].surfaces}))


def resolve(
    files: Mapping[str, PolicyFile],
    tenant_id: str,
    surface: str,
    tenancy: Tenancy,
    *,
    sources: Mapping[str, Path] | None = None,
) -> ResolvedPolicy:
    """The tenant's policy for `surface`, every field filled in; PolicyError when it cannot be.

    `files` maps file stems to parsed files (`default` is default.yaml); `sources` maps stems to
    the paths used in error messages.
    """
    if not re.fullmatch(TENANT_ID_PATTERN, tenant_id):
        raise PolicyError(_path(sources, tenant_id), None, f"invalid tenant id {tenant_id!r}")
    chain = chain_of(files, tenant_id, sources=sources)
    layers = [(name, files[name]) for name in reversed(chain)]
    merged = _merge(files, chain, surface)
    categories, none_applying, on_error = merged.categories, merged.none_applying, merged.on_error

    buckets, prefixes = _locations(layers, tenant_id, tenancy, sources)
    dsa_categories: dict[str, str] = {}
    restricts = False
    description = owner = None
    for _, layer in layers:
        if layer.dsa is not None:
            dsa_categories.update(layer.dsa.categories)
            if "review_restricts_visibility" in layer.dsa.model_fields_set:
                restricts = layer.dsa.review_restricts_visibility
        description = layer.description if layer.description is not None else description
        owner = layer.owner if layer.owner is not None else owner

    return ResolvedPolicy(
        tenant_id=tenant_id,
        surface=surface if merged.overridden else "default",
        chain=chain,
        categories=tuple(
            _category(code, name, categories[code], sources, (surface, merged.overrides_from))
            for code, name in zip(CODES, CATEGORIES, strict=False)
        ),
        none_applying=_none_applying(none_applying, sources, (surface, merged.overrides_from)),
        on_error=_on_error(on_error, chain[0], sources),
        buckets=buckets,
        prefixes=prefixes,
        dsa_categories=dict(sorted(dsa_categories.items())),
        review_restricts_visibility=restricts,
        description=description,
        owner=owner,
    )


@dataclass(frozen=True)
class _Merged:
    """The row and on_error fields of a chain for one surface, each with the file and merge
    step that last set it (steps from `overrides_from` on are the surface's overrides)."""

    categories: dict[str, _Fields]
    none_applying: _Fields
    on_error: dict[str, tuple[Action, str, int]]  # code -> action, file, merge step
    overrides_from: int
    steps: int

    @property
    def overridden(self) -> bool:
        """Whether any file of the chain overrides the surface."""
        return self.steps > self.overrides_from


def _merge(files: Mapping[str, PolicyFile], chain: tuple[str, ...], surface: str) -> _Merged:
    layers = [(name, files[name]) for name in reversed(chain)]
    overrides = [(n, f.surfaces[surface]) for n, f in layers if surface in f.surfaces]
    categories: dict[str, _Fields] = {code: {} for code in CODES}
    none_applying: _Fields = {}
    on_error: dict[str, tuple[Action, str, int]] = {}
    parts: list[tuple[str, PolicyFile | SurfaceOverride]] = [*layers, *overrides]
    for step, (name, part) in enumerate(parts):
        for code, category in part.categories.items():
            _set(categories[code], category, (name, step))
        if part.none_applying is not None:
            _set(none_applying, part.none_applying, (name, step))
        if part.on_error is not None:
            raw = part.on_error
            mapping = {"default": raw} if isinstance(raw, str) else raw
            on_error.update({code: (a, name, step) for code, a in mapping.items()})
    return _Merged(categories, none_applying, on_error, len(layers), len(parts))


ROW_FIELDS = ("mode", "action", "block_at", "review_at")


def row_sources(
    files: Mapping[str, PolicyFile], chain: tuple[str, ...], surface: str, code: str
) -> dict[str, tuple[str, bool]]:
    """For row `code` (O1..O9, or NA for `none_applying`) of `chain` resolved for `surface`:
    the file that last set each of its fields, and whether it did so in its surface override.
    Fields no file sets are left out; an action that comes from a mode set after it (the
    mode's own action, as `resolve` decides it) is the mode's file's."""
    merged = _merge(files, chain, surface)
    fields = merged.none_applying if code == NONE_APPLYING else merged.categories[code]
    found = {
        name: (fields[name][1][0], fields[name][1][1] >= merged.overrides_from)
        for name in ROW_FIELDS
        if name in fields
    }
    mode_step, action_step = _step(fields, "mode"), _step(fields, "action")
    if mode_step is not None and (action_step is None or mode_step > action_step):
        found["action"] = found["mode"]
    return {name: found[name] for name in ROW_FIELDS if name in found}


def on_error_source(
    files: Mapping[str, PolicyFile], chain: tuple[str, ...], surface: str, code: str
) -> tuple[str, bool] | None:
    """The file that set the on_error action of error `code` (its own key, else `default`)
    for `chain` resolved for `surface`, and whether in its surface override; None when no
    file sets it (the built-in review)."""
    merged = _merge(files, chain, surface)
    found = merged.on_error.get(code) or merged.on_error.get("default")
    return None if found is None else (found[1], found[2] >= merged.overrides_from)


def _set(fields: _Fields, model: BaseModel, origin: tuple[str, int]) -> None:
    for field in model.model_fields_set:
        fields[field] = (getattr(model, field), origin)


_MODE_ACTION: dict[str, Action] = {"default": "block", "sensitive": "block", "allowed": "allow"}


def _step(fields: _Fields, name: str) -> int | None:
    """The merge step (0 = the default policy) that last set `name`."""
    entry = fields.get(name)
    return None if entry is None else entry[1][1]


def _value(fields: _Fields, name: str) -> Any:
    entry = fields.get(name)
    return None if entry is None else entry[0]


def _category(
    code: str, name: str, fields: _Fields, sources: Mapping[str, Path] | None, scope: _Scope
) -> ResolvedCategory:
    for text in _TEXTS:
        value = _value(fields, text)
        if value is None or (isinstance(value, str) and not value.strip()):
            label = "should_not/can text" if text in ("should_not", "can") else text
            reason = f"categories.{code}: no {label} (set it in default.yaml)"
            raise PolicyError(_path(sources, ROOT), None, reason)
    mode = cast(Mode, _value(fields, "mode") or "default")
    action = cast(Action, _value(fields, "action") or _MODE_ACTION[mode])
    mode_step, action_step = _step(fields, "mode"), _step(fields, "action")
    if mode_step is not None and action_step is not None and mode_step > action_step:
        # A layer that changes the mode without naming an action gets the mode's own default:
        # `mode: allowed` on top of the default policy's `action: block` means allow.
        action = _MODE_ACTION[mode]
    block_at, review_at = _thresholds(f"categories.{code}", fields, sources, scope)
    return ResolvedCategory(
        code=code,
        name=name,
        mode=mode,
        action=action,
        block_at=block_at,
        review_at=review_at,
        should_not=_value(fields, "should_not"),
        can=_value(fields, "can"),
        allowed_text=_value(fields, "allowed_text"),
        sensitive_text=_value(fields, "sensitive_text"),
    )


def _none_applying(
    fields: _Fields, sources: Mapping[str, Path] | None, scope: _Scope
) -> ResolvedNoneApplying:
    block_at, review_at = _thresholds("none_applying", fields, sources, scope)
    action = cast(Action, _value(fields, "action") or "review")
    return ResolvedNoneApplying(action=action, block_at=block_at, review_at=review_at)


def _thresholds(
    where: str, fields: _Fields, sources: Mapping[str, Path] | None, scope: _Scope
) -> tuple[float | None, float | None]:
    """Thresholds merged from different files and surfaces must still be ordered."""
    block_at, review_at = _value(fields, "block_at"), _value(fields, "review_at")
    if block_at is not None and review_at is not None and review_at > block_at:
        # Blame the file merged last, where it set the later of the two values.
        origin = max(fields["block_at"][1], fields["review_at"][1], key=lambda o: o[1])
        surface, overrides_from = scope

        def set_in(name: str) -> str:
            stem, step = fields[name][1]
            part = f"surfaces.{surface}" if step >= overrides_from else "top level"
            return f"{_path(sources, stem).name}, {part}"

        key = f"surfaces.{surface}.{where}" if origin[1] >= overrides_from else where
        raise PolicyError(
            _path(sources, origin[0]),
            None,
            f"{key}: review_at {review_at} ({set_in('review_at')}) is above block_at "
            f"{block_at} ({set_in('block_at')}) once merged",
        )
    return block_at, review_at


def _on_error(
    merged: Mapping[str, tuple[Action, str, int]], tenant: str, sources: Mapping[str, Path] | None
) -> dict[str, Action]:
    actions: dict[str, Action] = {code: action for code, (action, _, _) in merged.items()}
    actions.setdefault("default", "review")
    for code in sorted(SECURITY_ERRORS):
        if actions.get(code.value, actions["default"]) == "allow":
            origin = merged.get(code.value, merged.get("default", (None, tenant, 0)))[1]
            raise PolicyError(
                _path(sources, origin),
                None,
                f"on_error.{code.value}: a security error can never map to allow",
            )
    return dict(sorted(actions.items()))


def _locations(
    layers: list[tuple[str, PolicyFile]],
    tenant_id: str,
    tenancy: Tenancy,
    sources: Mapping[str, Path] | None,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    buckets, prefixes = default_locations(tenant_id, tenancy)
    for name, layer in layers:
        allowed = layer.allowed
        if allowed is None:
            continue
        for field, values, rule in (
            ("buckets", allowed.buckets, bucket_name_problem),
            ("prefixes", allowed.prefixes, prefix_problem),
        ):
            why = next((w for w in map(rule, values or ()) if w is not None), None)
            if why is not None:
                raise PolicyError(_path(sources, name), None, f"allowed.{field}: {why}")
        if allowed.buckets is not None:
            buckets = tuple(sorted(set(allowed.buckets)))
        if allowed.prefixes is not None:
            prefixes = tuple(sorted(set(allowed.prefixes)))
    return buckets, prefixes


def _path(sources: Mapping[str, Path] | None, name: str) -> Path:
    if sources is not None and name in sources:
        return sources[name]
    return Path(f"{name}.yaml")
