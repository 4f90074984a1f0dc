"""Checking a policy directory as a whole: every file loaded, every tenant and surface compiled.

Unlike the registry, which stops at the first problem at start-up and keeps last good versions
on reload, this pass collects every problem (`path:line: reason`) so that `policy validate` can
report them all at once. It reads the files but logs nothing and keeps no state.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from moderator.errors import ConfigError
from moderator.policy.compiled import TenantPolicy, compile_policy, document_problem
from moderator.policy.document import PolicyFile
from moderator.policy.load import (
    PolicyError,
    load_file,
    more_problems,
    policy_paths,
    read_policy,
)
from moderator.policy.memo import COMPILED
from moderator.policy.resolve import ROOT, resolve, surfaces
from moderator.settings import TenancySettings

SURFACE_DEFAULT = "default"
# "categories.O2: ..." -> the dotted key a resolve error names, used to find its line.
_FIELD = re.compile(r"^([a-z_]+(?:\.[A-Za-z0-9_]+)*): ")

PolicyKey = tuple[str, str]  # (tenant, surface)


@dataclass(frozen=True)
class DirectoryCheck:
    """The outcome of checking one directory."""

    directory: Path
    files: Mapping[str, PolicyFile]  # stem -> parsed file, for the files that loaded
    paths: Mapping[str, Path]  # stem -> path, for every *.yaml / *.yml found
    policies: Mapping[PolicyKey, TenantPolicy]  # the tenants that compiled, every surface
    # Each problem (`path:line: reason`) with the file it is about, so one tenant's can be
    # picked out; in file order, without duplicates.
    problems: tuple[tuple[Path, str], ...]

    @property
    def errors(self) -> tuple[str, ...]:
        """The problems' lines, in file order, without duplicates."""
        return tuple(dict.fromkeys(line for _, line in self.problems))


def check(
    directory: Path, tenancy: TenancySettings, *, candidate: Path | None = None
) -> DirectoryCheck:
    """Load and compile everything in `directory`; ConfigError when it is unusable as a whole.

    A directory that is missing or has no default.yaml (or .yml) raises (one line). Problems
    in files are collected in `errors`; a tenant whose chain reaches a file that failed to load
    is skipped silently, since that file's own error already explains it. A `candidate` file
    from elsewhere takes the place of the directory's file for its tenant (if any), so a new or
    changed file can be checked against the files it would join before it is copied in.
    """
    if not directory.is_dir():
        raise ConfigError(f"policies.dir: {directory} is not a directory")
    paths, duplicates = policy_paths(directory)
    if candidate is not None and candidate.parent.resolve() != directory.resolve():
        paths[candidate.stem] = candidate
        duplicates = [error for error in duplicates if error.path.stem != candidate.stem]
    if ROOT not in paths:
        raise ConfigError(f"{directory}: no {ROOT}.yaml (every policy directory needs one)")
    files: dict[str, PolicyFile] = {}
    problems: list[tuple[Path, str]] = [(error.path, str(error)) for error in duplicates]
    failed: set[str] = {error.path.stem for error in duplicates}
    for stem, path in paths.items():
        if stem in failed:
            continue
        try:
            files[stem] = load_file(path)
        except PolicyError as exc:
            failed.add(stem)
            problems.extend((path, line) for line in exc.problems())
    policies: dict[PolicyKey, TenantPolicy] = {}
    for tenant in sorted(files):
        if _blocked(files, failed, tenant):
            continue
        try:
            compiled = compile_tenant(files, tenant, tenancy, sources=paths)
        except PolicyError as exc:
            problems.extend((exc.path, line) for line in with_line(exc).problems())
            continue
        policies.update({(tenant, surface): p for surface, p in compiled.items()})
    return DirectoryCheck(directory, files, paths, policies, tuple(dict.fromkeys(problems)))


def check_file(
    path: Path, directory: Path, tenancy: TenancySettings
) -> tuple[dict[PolicyKey, TenantPolicy], list[str]]:
    """One policy file checked in the context of `directory` (its own, or the one it is meant
    for): its tenant's compiled policies, and the problems of the files its tenant depends on
    (the file itself, the bases it extends, default.yaml), since those decide whether it works.
    Problems of other tenants' files are left out: they are not the file's to fix."""
    result = check(directory, tenancy, candidate=path)
    tenant = path.stem
    chain = {
        result.paths[stem] for stem in chain_stems(result.files, tenant) if stem in result.paths
    }
    errors = [line for source, line in result.problems if source in chain or source == path]
    policies = {key: p for key, p in result.policies.items() if key[0] == tenant}
    return policies, list(dict.fromkeys(errors))


def chain_stems(files: Mapping[str, PolicyFile], tenant: str) -> list[str]:
    """The stems along the tenant's `extends` chain, as far as it can be followed (to a missing
    or unloaded file, or the start of a cycle), and default always: unlike `resolve.chain_of`,
    never an error, since the chain's problems are what the caller looks for."""
    chain: list[str] = []
    name: str | None = tenant
    while name is not None and name not in chain:
        chain.append(name)
        if name == ROOT or name not in files:
            break
        name = files[name].extends or ROOT
    return chain if ROOT in chain else [*chain, ROOT]


def broken_link(
    files: Mapping[str, PolicyFile], failed: Collection[str], tenant: str
) -> str | None:
    """The first file of the tenant's `extends` chain (itself first, default.yaml last) that
    fails to load, or None when every one loads."""
    return next((stem for stem in chain_stems(files, tenant) if stem in failed), None)


def check_directory(
    directory: Path, tenancy: TenancySettings
) -> tuple[dict[PolicyKey, TenantPolicy], list[str]]:
    """{(tenant, surface): compiled policy} for every tenant that compiled, and every problem."""
    result = check(directory, tenancy)
    return dict(result.policies), list(result.errors)


def one_line(directory: Path, errors: Sequence[str]) -> str:
    """A directory's problems as one line, for start-up and `scan`: the first and, when there
    are others, their count and the command that lists them all."""
    if len(errors) == 1:
        return errors[0]
    command = f"moderator policy validate {shlex.quote(str(directory))}"
    return f"{errors[0]}{more_problems(len(errors) - 1)}; run `{command}` to see every problem"


def compile_tenant(
    files: Mapping[str, PolicyFile],
    tenant: str,
    tenancy: TenancySettings,
    *,
    sources: Mapping[str, Path] | None = None,
) -> dict[str, TenantPolicy]:
    """The tenant compiled for its default surface and each surface its chain declares; once
    per process for the same files and settings (moderator.policy.memo)."""

    def build() -> dict[str, TenantPolicy]:
        compiled = {
            surface: compile_policy(resolve(files, tenant, surface, tenancy, sources=sources))
            for surface in (SURFACE_DEFAULT, *surfaces(files, tenant, sources=sources))
        }
        for policy in compiled.values():
            problem = document_problem(policy)
            if problem is not None:
                name = policy.resolved.chain[0]
                path = (sources or {}).get(name, Path(f"{name}.yaml"))
                raise PolicyError(path, None, problem)
        return compiled

    return COMPILED.compiled(files, tenant, tenancy, build)


def compile_unknown(result: DirectoryCheck, tenant: str, tenancy: TenancySettings) -> TenantPolicy:
    """The default policy compiled for a tenant without a file, as the registry does it."""
    files = {**result.files, tenant: PolicyFile()}
    return compile_policy(resolve(files, tenant, SURFACE_DEFAULT, tenancy, sources=result.paths))


def with_line(error: PolicyError) -> PolicyError:
    """The error with the line of the key it names, when it had none and the key is found."""
    if error.line is not None:
        return error
    match = _FIELD.match(error.reason)
    if match is None:
        return error
    line = key_line(error.path, tuple(match.group(1).split(".")))
    return error if line is None else PolicyError(error.path, line, error.reason, error.others)


def key_line(path: Path, keys: tuple[str, ...]) -> int | None:
    """The 1-based line of the deepest of `keys` (a path of mapping keys) present in the file;
    a key not found as written is looked up in any case."""
    try:
        node = yaml.compose(read_policy(path).decode("utf-8"), Loader=yaml.SafeLoader)
    except (PolicyError, UnicodeDecodeError, yaml.YAMLError):
        return None
    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        found = next((pair for pair in node.value if pair[0].value == key), None)
        if found is None:  # a category code written in another case (`o2` for `O2`)
            found = next(
                (p for p in node.value if str(p[0].value).casefold() == key.casefold()), None
            )
        if found is None:
            break
        line = found[0].start_mark.line + 1
        node = found[1]
    return line


def _blocked(files: Mapping[str, PolicyFile], failed: set[str], tenant: str) -> bool:
    """Whether the tenant's chain runs into a file that failed to load."""
    return broken_link(files, failed, tenant) is not None
