"""`moderator policy validate|render|diff`: check, show and compare policy directories.

Exit codes: 0 ok (a diff with differences included), 2 when a directory is invalid, a tenant is
unknown or the settings are bad. Problems go to stderr, one `path:line: reason` per line.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from moderator.cli.preflight import check_directory
from moderator.engine.capabilities import capabilities
from moderator.errors import ConfigError
from moderator.policy.check import (
    SURFACE_DEFAULT,
    DirectoryCheck,
    PolicyKey,
    check,
    check_file,
    compile_unknown,
)
from moderator.policy.compiled import TenantPolicy
from moderator.policy.decide import (
    DECISION_COLUMNS,
    ERROR_COLUMNS,
    decision_rows,
    decision_table_json,
    error_rows,
)
from moderator.policy.diff import SurfaceDiff, TenantDiff, diff_policies
from moderator.policy.load import SUFFIXES
from moderator.policy.reach import shortfalls
from moderator.policy.resolve import ROOT
from moderator.settings import Settings, load_settings
from moderator.text import json_text


def cmd_validate(
    directory: Path | None,
    config: Path | None,
    engine: str | None = None,
    policies: Path | None = None,
) -> int:
    """Print `tenant surface version` per compiled policy (0), or every problem on stderr (2).

    The directory is `directory` (the positional DIR) or `policies` (--policies DIR), not both
    unless they are the same; else policies.dir. A policy file in place of DIR is checked on
    its own, against the files of --policies DIR when given, else of its own directory
    (`check_file`). With `engine` (an `engine.kind`), also one warning line on stderr per tenant
    whose policy acts on categories that engine can never raise; warnings leave the exit code
    at 0.
    """
    candidate = None
    if directory is not None and _is_policy_file(directory):
        candidate, directory = directory, policies or directory.parent
        _check_file_context(candidate, directory, named=policies is not None)
    elif directory is not None:
        if policies is not None and policies != directory:
            raise ConfigError(
                f"DIR: {directory} and --policies {policies} disagree: give the directory once"
            )
        _check_directory_argument(directory)
    settings = _settings(config, directory or policies)
    declared = capabilities(engine) if engine is not None else None  # unknown kind: exit 2
    if candidate is None:
        result = _checked(_configured_dir(settings, directory or policies), settings)
        if result is None:
            return 2
        policies_found: Mapping[PolicyKey, TenantPolicy] = result.policies
    else:
        found, errors = check_file(candidate, settings.policies.dir, settings.tenancy)
        if errors:
            _print_lines(errors, sys.stderr)
            return 2
        policies_found = found
    rows = [(t, s, p.version) for (t, s), p in _ordered(policies_found)]
    _print_lines(table(("tenant", "surface", "version"), rows, header=False), sys.stdout)
    if candidate is None:
        from moderator.policy.overlap import overlaps

        shared = overlaps(policies_found)
        _print_lines((f"moderator: warning: {line}" for line in shared), sys.stderr)
    if engine is not None and declared is not None:
        gaps = shortfalls([p.resolved for p in policies_found.values()], engine, declared)
        _print_lines((f"moderator: warning: {gap.message()}" for gap in gaps), sys.stderr)
    return 0


def _is_policy_file(path: Path) -> bool:
    """Whether DIR names one policy file (`*.yaml` or `*.yml`, not a directory) rather than
    a directory: a user checking a file before adding it to the policy directory."""
    return path.suffix in SUFFIXES and path.exists() and not path.is_dir()


def _check_directory_argument(path: Path) -> None:
    """DIR is a directory: ConfigError otherwise, saying what to pass for a file that is not
    a policy file (whose name the directory scan would skip)."""
    if path.exists() and not path.is_dir():
        command = f"moderator policy validate {shlex.quote(str(path.parent))}"
        raise ConfigError(
            f"DIR: {path} is neither a directory nor a policy file (*.yaml, *.yml); to check "
            f"every file of its directory: {command}"
        )
    check_directory("DIR", path)


def _check_file_context(path: Path, directory: Path, named: bool) -> None:
    """The directory a file is checked against exists and has a default policy; for a file's
    own directory (not `named` with --policies), a missing default policy most likely means
    the file sits outside the policy directory, so the error says how to name that one."""
    check_directory("--policies" if named else "DIR", directory)
    if named or any((directory / f"{ROOT}{suffix}").exists() for suffix in SUFFIXES):
        return
    # No `DIR:` prefix: the path itself is named, and the problem is its directory, not DIR.
    raise ConfigError(
        f"{path}: its directory has no {ROOT}.yaml to check it against; add --policies DIR "
        "to check it against the policy directory it is meant for"
    )


def cmd_render(
    tenant: str,
    *,
    surface: str | None,
    policies: Path | None,
    config: Path | None,
    output_format: str = "text",
) -> int:
    """Print one tenant's compiled policy for a surface: header, prompt, decision table."""
    settings = _settings(config, policies)
    directory = _configured_dir(settings, policies)
    result = check(directory, settings.tenancy)
    requested = surface or SURFACE_DEFAULT
    unknown = tenant not in result.paths
    if unknown and not settings.policies.default_for_unknown:
        raise ConfigError(f"no policy file for tenant {tenant} in {directory}")
    needed = (SURFACE_DEFAULT if unknown else tenant, SURFACE_DEFAULT)
    if needed not in result.policies:
        _print_lines(result.errors, sys.stderr)
        return 2
    if result.errors:
        count = len(result.errors)
        print(
            f"moderator: warning: {count} problem{'' if count == 1 else 's'} elsewhere in "
            f"{directory}; run `moderator policy validate {shlex.quote(str(directory))}` "
            "to see them",
            file=sys.stderr,
        )
    if unknown:
        policy = compile_unknown(result, tenant, settings.tenancy)
    else:
        policy = result.policies.get(
            (tenant, requested), result.policies[(tenant, SURFACE_DEFAULT)]
        )
    if output_format == "json":
        doc = render_json(policy, result, requested=requested, unknown=unknown)
        print(json_text(doc, indent=2))
    else:
        _print_lines(render_text(policy, result, requested=requested, unknown=unknown), sys.stdout)
    return 0


def cmd_diff(old: Path, new: Path, config: Path | None) -> int:
    """Print what changes from OLD to NEW per tenant and surface; 0 even when something does."""
    check_directory("OLD_DIR", old)
    check_directory("NEW_DIR", new)
    settings = _settings(config, None)
    before = _checked(old, settings)
    after = _checked(new, settings)
    if before is None or after is None:
        return 2
    _print_lines(format_diff(diff_policies(before.policies, after.policies)), sys.stdout)
    return 0


# -- rendering ---------------------------------------------------------------------------------


def render_text(
    policy: TenantPolicy, result: DirectoryCheck, *, requested: str, unknown: bool
) -> list[str]:
    """The `policy render` text output, line by line."""
    resolved = policy.resolved
    in_force = resolved.surface
    if in_force != requested:
        declared = sorted(
            {
                name
                for stem in resolved.chain
                if stem in result.files
                for name in result.files[stem].surfaces
            }
        )
        named = f"declared: {', '.join(declared)}" if declared else "the chain declares none"
        surface = f"{in_force} (requested {requested!r}: no override declared for it; {named})"
    else:
        surface = in_force
    header = [
        ("tenant", resolved.tenant_id),
        ("surface", surface),
        ("version", policy.version),
        ("full hash", policy.full_hash),
        ("prompt sha256", policy.prompt_sha256),
        ("chain", " -> ".join(_chain(result, resolved.chain, unknown))),
        ("description", resolved.description or "-"),
        ("owner", resolved.owner or "-"),
    ]
    if unknown:
        note = f"tenant {resolved.tenant_id} has no policy file: the default policy applies"
        header.append(("note", f"{note} (policies.default_for_unknown)"))
    lines = table(("", ""), header, header=False)
    lines += [
        "",
        "--- prompt (exactly as sent to the model) ---",
        policy.prompt,
        "--- end of prompt ---",
    ]
    lines += ["", "--- decision table ---", *table(DECISION_COLUMNS, decision_rows(resolved))]
    lines += ["", "--- on_error ---", *table(ERROR_COLUMNS, error_rows(resolved))]
    prefixes = ", ".join(resolved.prefixes) or "(any key in the buckets)"
    locations = [("buckets", ", ".join(resolved.buckets) or "(none)"), ("prefixes", prefixes)]
    lines += ["", "--- allowed locations ---", *table(("", ""), locations, header=False)]
    return lines


def render_json(
    policy: TenantPolicy, result: DirectoryCheck, *, requested: str, unknown: bool
) -> dict[str, Any]:
    """The `policy render --format json` document."""
    resolved = policy.resolved
    return {
        "tenant": resolved.tenant_id,
        "surface": resolved.surface,
        "requested_surface": requested,
        "version": policy.version,
        "full_hash": policy.full_hash,
        "prompt_sha256": policy.prompt_sha256,
        "chain": _chain(result, resolved.chain, unknown),
        "default_for_unknown": unknown,
        "policy": resolved.to_json(),
        "prompt": policy.prompt,
        "decision_table": decision_table_json(resolved),
    }


def format_diff(diffs: Iterable[TenantDiff]) -> list[str]:
    """The `policy diff` output: one block per tenant, then a summary line."""
    lines: list[str] = []
    counts = {"changed": 0, "added": 0, "removed": 0, "unchanged": 0}
    for diff in diffs:
        counts[diff.kind] += 1
        if diff.kind == "unchanged":
            lines.append(f"{diff.tenant}: unchanged ({_versions(diff.surfaces)})")
            continue
        lines.append(f"{diff.tenant}: {diff.kind}")
        for surface in diff.surfaces:
            lines.extend(_surface_lines(surface))
    total = sum(counts.values())
    lines.append(f"{total} tenant(s): " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    return lines


def _surface_lines(diff: SurfaceDiff) -> list[str]:
    name, old, new = diff.surface, diff.old_version, diff.new_version
    if diff.kind == "added":
        return [f"  {name}: added (version {new})"]
    if diff.kind == "removed":
        return [f"  {name}: removed (was version {old})"]
    if diff.kind == "unchanged":
        return [f"  {name}: unchanged (version {old})"]
    if diff.kind == "surface_added":
        head = (
            f"  {name}: surface added, version {old} -> {new} (it had the default surface's rules)"
        )
    elif diff.kind == "surface_removed":
        head = (
            f"  {name}: surface removed, version {old} -> {new} (now the default surface's rules)"
        )
    else:
        head = f"  {name}: version {old} -> {new}"
    body = [f"    {change}" for change in diff.changes]
    return [head, *body, f"    prompt changed: {'yes' if diff.prompt_changed else 'no'}"]


def _versions(surfaces: Sequence[SurfaceDiff]) -> str:
    first, *rest = surfaces
    return "; ".join(
        [f"version {first.old_version}", *(f"{s.surface} {s.old_version}" for s in rest)]
    )


# -- helpers -----------------------------------------------------------------------------------


def table(
    columns: Sequence[str], rows: Iterable[Sequence[str]], *, header: bool = True
) -> list[str]:
    """Rows as aligned columns (two spaces apart, no trailing spaces)."""
    body = [tuple(row) for row in rows]
    every = [tuple(columns), *body] if header else body
    if not every:
        return []
    widths = [max(len(row[i]) for row in every) for i in range(len(every[0]) - 1)]
    return [
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in every
    ]


def _settings(config: Path | None, policies: Path | None) -> Settings:
    return load_settings(config, {"policies.dir": policies})


def _configured_dir(settings: Settings, given: Path | None) -> Path:
    """policies.dir; when no argument named it and it is not a directory, ConfigError saying
    how to name one (the default, ./policies, is missing wherever the command is run from)."""
    directory = settings.policies.dir
    if given is None and not directory.is_dir():
        raise ConfigError(
            f"policies.dir: {directory} is not a directory; pass --policies DIR or set policies.dir"
        )
    return directory


def _checked(directory: Path, settings: Settings) -> DirectoryCheck | None:
    """The directory's check, or None after printing its problems to stderr."""
    result = check(directory, settings.tenancy)
    if result.errors:
        _print_lines(result.errors, sys.stderr)
        return None
    return result


def _ordered(policies: Mapping[PolicyKey, TenantPolicy]) -> list[tuple[PolicyKey, TenantPolicy]]:
    return sorted(
        policies.items(), key=lambda item: (item[0][0], item[0][1] != SURFACE_DEFAULT, item[0][1])
    )


def _chain(result: DirectoryCheck, chain: Sequence[str], unknown: bool) -> list[str]:
    return [
        "(no file)" if unknown and i == 0 else str(result.paths.get(name, f"{name}.yaml"))
        for i, name in enumerate(chain)
    ]


def _print_lines(lines: Iterable[str], stream: TextIO) -> None:
    for line in lines:
        print(line, file=stream)
