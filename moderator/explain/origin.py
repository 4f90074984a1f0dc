"""Where a decision-table row's values were set: read from the policy files. Pure.

A compiled policy document holds the merged values only, so the file (and surface override)
that set a row's mode, action or thresholds cannot be read from the audit store. The policy
files can say it, but only while they still compile to the version the verdict records: then
they are, byte for byte in what matters, the files that decided. `attach_origin` checks that
and otherwise leaves the explanation as it was (an origin that might be wrong is worse than
none); `origin_gap` says why there is none, so a reader can find the files that decided.

Who set what comes from `moderator.policy.resolve.row_sources`, the resolver's own merge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

from moderator.explain.model import Explanation, RowOrigin, RowValue, has_origin
from moderator.policy.document import PolicyFile
from moderator.policy.model import ResolvedPolicy
from moderator.policy.resolve import NONE_APPLYING, on_error_source, row_sources

SURFACE_DEFAULT = "default"


class Compiled(Protocol):
    """What is read of a compiled policy (`moderator.policy.compiled.TenantPolicy` has it)."""

    @property
    def version(self) -> str: ...

    @property
    def resolved(self) -> ResolvedPolicy: ...


def attach_origin(
    e: Explanation,
    files: Mapping[str, PolicyFile],
    file_names: Mapping[str, str],
    policies: Mapping[tuple[str, str], Compiled],
) -> Explanation:
    """`e` with `policy.row_origin` set when the policy files compile, for the verdict's tenant
    and surface, to the version it records; `e` unchanged otherwise (`origin_gap` says why).

    `files` and `file_names` map file stems to parsed files and file names (`acme.yaml`);
    `policies` maps (tenant, surface) to the compiled policies of a policy directory.
    """
    found = _deciding(e, files, policies, "the policy files")
    if isinstance(found, str):
        return e
    policy, base = found
    row = e.policy.row
    surface = e.input.surface or SURFACE_DEFAULT
    chain = policy.resolved.chain
    if row is None:  # an error verdict: who set its on_error action
        assert e.error is not None
        origin = on_error_origin(files, file_names, chain, surface, e.error.code)
    else:
        origin = row_origin(files, file_names, chain, surface, row.category)
    declared = {s for stem in chain for s in files[stem].surfaces}
    if surface != SURFACE_DEFAULT and surface not in declared:
        origin = replace(origin, undeclared_surface=surface)
    if origin.surface is not None and row is not None:
        before = row_values(base.resolved, row.category)
        after = row_values(policy.resolved, row.category)
        changed = {k: (before[k], after[k]) for k in after if before[k] != after[k]}
        origin = replace(origin, overrides=changed)
    return replace(e, policy=replace(e.policy, row_origin=origin))


def origin_gap(
    e: Explanation,
    files: Mapping[str, PolicyFile],
    policies: Mapping[tuple[str, str], Compiled],
    where: str,
) -> str | None:
    """Why `attach_origin` gives `e` no origin, in words naming `where` the policies were read
    (`policies.dir (DIR)`); None when it gives one."""
    found = _deciding(e, files, policies, where)
    return found if isinstance(found, str) else None


def _deciding(
    e: Explanation,
    files: Mapping[str, PolicyFile],
    policies: Mapping[tuple[str, str], Compiled],
    where: str,
) -> tuple[Compiled, Compiled] | str:
    """The compiled policy of the verdict's surface and of the tenant's default surface, when
    they are the version that decided; otherwise why not, as one clause."""
    surface = e.input.surface or SURFACE_DEFAULT
    name = f"{e.tenant_id}/{surface}"
    base = policies.get((e.tenant_id, SURFACE_DEFAULT))
    policy = policies.get((e.tenant_id, surface), base)
    if not has_origin(e):
        return "the verdict has no decision-table row"
    if policy is None or base is None:
        return f"{where} has no policy for {name}"
    if policy.version != e.policy.version:
        recorded = e.policy.version or "(none recorded)"
        return f"{where} compiles {name} to version {policy.version}, not the verdict's {recorded}"
    if any(stem not in files for stem in policy.resolved.chain):
        return f"{where} lacks a file that {name} extends"
    return policy, base


def row_origin(
    files: Mapping[str, PolicyFile],
    file_names: Mapping[str, str],
    chain: tuple[str, ...],
    surface: str,
    code: str,
) -> RowOrigin:
    """Which file, or which surface override in which file, last set each field of row `code`
    (O1..O9, or NA for `none_applying`) for `surface` (`resolve.row_sources`). Fields no file
    sets are left out."""
    return _origin_of(row_sources(files, chain, surface, code), file_names, surface)


def _origin_of(
    sources: Mapping[str, tuple[str, bool]], file_names: Mapping[str, str], surface: str
) -> RowOrigin:
    """A RowOrigin from field -> (file stem, set in its `surface` override)."""
    set_by = {
        name: _place(file_names.get(stem, f"{stem}.yaml"), surface if overriding else None)
        for name, (stem, overriding) in sources.items()
    }
    overridden = any(overriding for _, overriding in sources.values())
    return RowOrigin(surface=surface if overridden else None, set_by=set_by)


def row_values(resolved: ResolvedPolicy, code: str) -> dict[str, RowValue]:
    """The row fields of `code` in a resolved policy (NA: no mode)."""
    if code == NONE_APPLYING:
        na = resolved.none_applying
        return {"action": na.action, "block_at": na.block_at, "review_at": na.review_at}
    c = resolved.category(code)
    return {"mode": c.mode, "action": c.action, "block_at": c.block_at, "review_at": c.review_at}


def on_error_origin(
    files: Mapping[str, PolicyFile],
    file_names: Mapping[str, str],
    chain: tuple[str, ...],
    surface: str,
    code: str,
) -> RowOrigin:
    """Which file, or surface override, set the on_error action of error `code` for
    `surface`: `set_by` holds `on_error` (`built-in` when no file sets it)."""
    found = on_error_source(files, chain, surface, code)
    if found is None:
        return RowOrigin(surface=None, set_by={"on_error": "built-in"})
    return _origin_of({"on_error": found}, file_names, surface)


def _place(file_name: str, surface: str | None) -> str:
    return file_name if surface is None else f"surfaces.{surface} in {file_name}"
