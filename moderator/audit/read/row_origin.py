"""Where an explained verdict's decision-table row was set, read from the policy directory.

`moderator explain` and the audit API (`GET /v1/verdicts/{event_id}/explanation`) attach
`policy.row_origin` under the same rule: only while the directory (policies.dir, compiled
with the tenancy settings) still compiles to the verdict's policy version; otherwise, and when
the directory is missing or unusable as a whole, `policy.origin_not_shown` says why: the
command's names the directory and the flag that points it elsewhere, the API's names neither
the server's path nor a flag its clients cannot pass.
`with_origin` compiles the directory on each call (one command, one call); `PolicyOrigins`, for
a server, keeps the compiled directory until its policy files change on disk. The matching
itself is pure: `moderator.explain.origin`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from moderator.explain.model import has_origin

if TYPE_CHECKING:
    from moderator.explain.model import Explanation
    from moderator.policy.check import DirectoryCheck, PolicyKey
    from moderator.policy.compiled import TenantPolicy
    from moderator.policy.document import PolicyFile
    from moderator.settings import TenancySettings

DEFAULT = "default"  # default.yaml's stem
SURFACE_DEFAULT = "default"

COMMAND_HINT = "pass --policies DIR holding {held}"
SERVER_HINT = "the audit server shows it while its policies.dir holds {held}"
SERVER_DIR = "the audit server's policies.dir"  # its path is not shown to API clients

# What a policy directory's files are read again for: each *.yaml / *.yml entry's name, then
# its inode, size and modification time (ns), or None for an entry that cannot be stat'ed.
Signature = tuple[tuple[str, tuple[int, int, int] | None], ...]


def with_origin(explanation: Explanation, directory: Path, tenancy: TenancySettings) -> Explanation:
    """The explanation with where its decision-table row was set (which file, which surface
    override), read from the policy directory. When the directory cannot be read or no longer
    compiles to the verdict's policy version (its files are not the ones that decided, so they
    cannot say who set what), `policy.origin_not_shown` says so and how to point at others."""
    if not has_origin(explanation):
        return explanation
    result, problem = checked(directory, tenancy)
    return shown_or_why(explanation, result, tenancy, f"policies.dir ({directory})", problem)


def shown_or_why(
    explanation: Explanation,
    result: DirectoryCheck | None,
    tenancy: TenancySettings,
    where: str,
    problem: str | None = None,
    hint: str = COMMAND_HINT,
) -> Explanation:
    """`explanation` with its row origin from `result` (the directory `where` names, compiled),
    or with `policy.origin_not_shown` saying why there is none (`problem` when the directory
    is unusable as a whole) and, through `hint`, what would show it."""
    if result is None:
        return not_shown(explanation, problem or f"{where} cannot be read", hint)
    shown = attached(explanation, result, tenancy)
    if shown.policy.row_origin is not None:
        return shown
    from moderator.explain.origin import origin_gap

    broken = _unloaded(explanation.tenant_id, result)
    if broken is not None:
        return not_shown(explanation, f"{where} has a file that does not load: {broken}", hint)
    files, policies = _matchable(explanation, result, tenancy)
    gap = origin_gap(explanation, files, policies, where)
    return not_shown(explanation, gap or f"{where} does not say it", hint)


def _unloaded(tenant: str, result: DirectoryCheck) -> str | None:
    """The first problem of a file of `tenant`'s chain (its own, then what it extends, up to
    default.yaml) that exists and does not load; None when every one loads."""
    stem: str | None = tenant if tenant in result.paths else DEFAULT
    seen: set[str] = set()
    while stem is not None and stem not in seen:
        seen.add(stem)
        path = result.paths.get(stem)
        parsed = result.files.get(stem)
        if path is not None and parsed is None:
            # The file's name, not its path: an API answer must not show the server's paths.
            line = next((line for where, line in result.problems if where == path), path.name)
            return path.name + line[len(str(path)) :] if line.startswith(str(path)) else line
        if parsed is None or stem == DEFAULT:
            return None
        stem = parsed.extends or DEFAULT
    return None


def not_shown(explanation: Explanation, reason: str, hint: str = COMMAND_HINT) -> Explanation:
    """`explanation` saying why its row origin is not shown, and (`hint`, with `{held}`) what
    would show it."""
    from dataclasses import replace

    version = explanation.policy.version
    held = f"the policies of version {version}" if version else "the verdict's policies"
    note = f"{reason}; {hint.format(held=held)}"
    return replace(explanation, policy=replace(explanation.policy, origin_not_shown=note))


def compiled(directory: Path, tenancy: TenancySettings) -> DirectoryCheck | None:
    """Every file of `directory` loaded and every tenant compiled (`policy.check.check`); None
    when the directory is unusable as a whole (missing, unreadable, no default.yaml)."""
    return checked(directory, tenancy)[0]


def checked(directory: Path, tenancy: TenancySettings) -> tuple[DirectoryCheck | None, str | None]:
    """`compiled`, with the one-line reason when the directory is unusable as a whole."""
    from moderator.errors import ConfigError
    from moderator.policy.check import check

    try:
        return check(directory, tenancy), None
    except ConfigError as exc:
        return None, str(exc)


def attached(
    explanation: Explanation, result: DirectoryCheck | None, tenancy: TenancySettings
) -> Explanation:
    """`explanation` with the row origin its compiled directory gives (`attach_origin`)."""
    from moderator.explain.origin import attach_origin

    if result is None:
        return explanation
    names = {stem: path.name for stem, path in result.paths.items()}
    files, policies = _matchable(explanation, result, tenancy)
    return attach_origin(explanation, files, names, policies)


def _matchable(
    explanation: Explanation, result: DirectoryCheck, tenancy: TenancySettings
) -> tuple[Mapping[str, PolicyFile], Mapping[PolicyKey, TenantPolicy]]:
    """The files and compiled policies the verdict is matched against. A tenant without a file
    of its own is compiled as the registry compiles it under `policies.default_for_unknown`:
    an empty file extending default.yaml; a tenant whose own file does not load is not."""
    files: Mapping[str, PolicyFile] = result.files
    policies: Mapping[PolicyKey, TenantPolicy] = result.policies
    tenant = explanation.tenant_id
    if tenant not in files and tenant not in result.paths and DEFAULT in files:
        files, unknown = _as_unknown(result, tenant, explanation.input.surface, tenancy)
        policies = {**policies, **unknown}
    return files, policies


def _as_unknown(
    result: DirectoryCheck, tenant: str, surface: str | None, tenancy: TenancySettings
) -> tuple[dict[str, PolicyFile], dict[PolicyKey, TenantPolicy]]:
    """The directory's files with an empty one for `tenant`, and its policies compiled from
    them for the default surface and `surface`; none when they do not compile."""
    from moderator.policy.compiled import compile_policy
    from moderator.policy.document import PolicyFile
    from moderator.policy.load import PolicyError
    from moderator.policy.resolve import resolve

    files = {**result.files, tenant: PolicyFile()}
    surfaces = {SURFACE_DEFAULT, surface or SURFACE_DEFAULT}
    try:
        policies = {
            (tenant, s): compile_policy(resolve(files, tenant, s, tenancy, sources=result.paths))
            for s in surfaces
        }
    except PolicyError:
        return files, {}
    return files, policies


class PolicyOrigins:
    """`with_origin` for a long-running reader: the directory is compiled on first use and
    again only when its `signature` changes (a policy file added, removed, replaced or
    written), so an edit on disk shows in the next answer. Safe to call from several threads;
    a directory that cannot be listed is compiled on every call, as `with_origin` does."""

    def __init__(self, directory: Path, tenancy: TenancySettings) -> None:
        self.directory = directory
        self._tenancy = tenancy
        self._lock = threading.Lock()
        self._signature: Signature | None = None
        self._result: DirectoryCheck | None = None

    def __call__(self, explanation: Explanation) -> Explanation:
        if not has_origin(explanation):
            return explanation
        return shown_or_why(
            explanation, self.current(), self._tenancy, SERVER_DIR, hint=SERVER_HINT
        )

    def current(self) -> DirectoryCheck | None:
        """The compiled directory as its files are now (None: unusable as a whole)."""
        # Read before compiling: a file written during the compile changes the next signature.
        now = signature(self.directory)
        with self._lock:
            if now is None or now != self._signature:
                self._result = compiled(self.directory, self._tenancy)
                self._signature = now
            return self._result


def signature(directory: Path) -> Signature | None:
    """What changes when a policy file of `directory` does: each *.yaml / *.yml entry's name,
    inode, size and modification time (symlinks followed, as the files are read); None when
    the directory cannot be listed."""
    from moderator.policy.load import SUFFIXES

    try:
        with os.scandir(directory) as entries:
            names = sorted(e.name for e in entries if Path(e.name).suffix in SUFFIXES)
    except OSError:
        return None
    return tuple((name, _stat(directory / name)) for name in names)


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
