"""The policy registry: a directory of tenant files, validated, compiled, hot-reloaded.

Validate, compile, swap: every reload builds a complete new snapshot (each tenant's policy for
its default surface and every surface it declares) and replaces the old one in one assignment,
so an event never sees half of a change. A tenant is compiled only from files that all load:
while any file of its `extends` chain (its own, a base, default.yaml) fails, the tenant keeps
its last good compiled policies, as does a tenant whose policy fails to resolve or compile, so
a reload never applies what the same directory would refuse at start-up. The failing file is
reported (`file:line: reason`) in the log and in `errors`, and every tenant it holds back is
`stale` in its status, with that line, until the file is fixed. A new file that fails to load
has no good content: its tenant has a stale status with no versions, and its events find no
policy. With `metrics`, every reload also sets `moderator_policy_info` (1 for each tenant's
default-surface version in force, 0 for the one it replaced) and `moderator_policy_stale`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from moderator.errors import ConfigError
from moderator.obs.metrics import Metrics
from moderator.policy.check import broken_link, check, compile_tenant, one_line
from moderator.policy.compiled import TenantPolicy, compile_policy
from moderator.policy.document import PolicyFile
from moderator.policy.load import PolicyError, load_text, policy_paths, read_policy
from moderator.policy.resolve import resolve
from moderator.settings import TenancySettings

log = structlog.get_logger("moderator.policy")

DEFAULT = "default"
SURFACE_DEFAULT = "default"
UNKNOWN_TENANT_CACHE = 4096  # compiled default policies for unknown tenants (opt-in), LRU


@dataclass(frozen=True)
class TenantStatus:
    """What is in force for one tenant, for readiness checks and metrics."""

    versions: Mapping[str, str]  # surface -> version in force; none for a new file that fails
    loaded_at: datetime  # when the policies in force were compiled
    stale: bool  # a change on disk is not in force (see `error`)
    error: str | None


@dataclass(frozen=True)
class _File:
    fingerprint: str  # sha256 of the bytes
    policy: PolicyFile


@dataclass(frozen=True)
class _Snapshot:
    files: Mapping[str, _File]  # last good content per file stem
    paths: Mapping[str, Path]
    policies: Mapping[tuple[str, str], TenantPolicy]
    status: Mapping[str, TenantStatus]
    errors: tuple[str, ...] = ()
    blame: Mapping[str, str] = field(default_factory=dict)  # error -> its tenant
    unknown: OrderedDict[tuple[str, str], TenantPolicy] = field(default_factory=OrderedDict)


class PolicyRegistry:
    """Implements PolicyProvider over `directory/*.yaml` and `*.yml` (`default` is required)."""

    def __init__(
        self,
        directory: Path,
        tenancy: TenancySettings,
        *,
        default_for_unknown: bool = False,
        poll_interval_s: float = 0.0,
        metrics: Metrics | None = None,
        tolerant: bool = False,
    ) -> None:
        self._dir = directory
        self._tolerant = tolerant  # start with the tenants that load (a reader, not a service)
        self._metrics = metrics
        self._tenancy = tenancy
        self._default_for_unknown = default_for_unknown
        self._poll_interval_s = poll_interval_s
        self._lock = threading.Lock()  # one reload at a time; readers never take it
        self._unknown_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not directory.is_dir():
            raise ConfigError(f"policies.dir: {directory} is not a directory")
        self._snap = _Snapshot(files={}, paths={}, policies={}, status={})
        self.reload(initial=True)

    # -- PolicyProvider -----------------------------------------------------------------------

    def resolve(self, tenant_id: str, surface: str) -> TenantPolicy | None:
        snap = self._snap
        policy = snap.policies.get((tenant_id, surface))
        if policy is not None:
            return policy
        base = snap.policies.get((tenant_id, SURFACE_DEFAULT))
        if base is not None:
            return base.with_surface(surface)
        if not self._default_for_unknown:
            return None
        return self._unknown(snap, tenant_id, surface).with_surface(surface)

    def fallback(self, tenant_id: str, surface: str) -> TenantPolicy:
        """The default policy, which decides error verdicts for events no tenant policy covers."""
        return self._snap.policies[(DEFAULT, SURFACE_DEFAULT)].with_surface(surface)

    def unknown_reason(self, tenant_id: str) -> str:
        """`no policy for tenant 'x'`, and, when the tenant has a file that does not load (a
        new file broken from the start), that file's first problem: the verdict then says why
        a tenant whose file is there was judged as unknown."""
        status = self._snap.status.get(tenant_id)
        reason = f"no policy for tenant {tenant_id!r}"
        if status is not None and status.error:
            return f"{reason}: its policy file does not load ({status.error})"
        return reason

    # -- state ---------------------------------------------------------------------------------

    @property
    def errors(self) -> tuple[str, ...]:
        """`file:line: reason` for every file that fails (the tenants it holds back are stale in
        `status`, with its line as their `error`)."""
        return self._snap.errors

    def status(self) -> Mapping[str, TenantStatus]:
        return self._snap.status

    @property
    def stale(self) -> bool:
        return bool(self._snap.errors)

    def tenants(self) -> tuple[str, ...]:
        return tuple(sorted(self._snap.status))

    # -- reloading -----------------------------------------------------------------------------

    def start(self) -> None:
        """Poll the directory every `poll_interval_s` seconds (no-op when it is 0)."""
        if self._poll_interval_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, name="policy-reload", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def reload(self, *, initial: bool = False) -> bool:
        """Re-read changed files and swap in the result; True when anything in force changed.

        At start-up (`initial`) there is no last good version: any error raises ConfigError.
        """
        with self._lock:
            old = self._snap
            new = self._build(old, initial=initial)
            if new.errors and initial and not self._tolerant:
                raise ConfigError(self._startup_problem(new.errors))
            self._snap = new
            self._publish(old, new)
        changed = _changes(old, new)
        if new is not old:
            _log_overlaps(old, new)
        if initial:
            log.info("policies_loaded", directory=str(self._dir), tenants=len(new.status))
            return bool(changed)
        for tenant, surface, before, after in changed:
            log.info("policy_changed", tenant=tenant, surface=surface, old=before, new=after)
        _log_problems(old, new)
        return bool(changed)

    def _startup_problem(self, errors: tuple[str, ...]) -> str:
        """One line for a directory the service cannot start with, counting every problem as
        `policy validate` would list them (errors here hold one line per file)."""
        try:
            every = check(self._dir, self._tenancy).errors or errors
        except ConfigError:
            every = errors
        return one_line(self._dir, every)

    def _publish(self, old: _Snapshot, new: _Snapshot) -> None:
        """The metrics of what is in force now (under the reload lock: in order)."""
        if self._metrics is None or new is old:
            return
        for tenant in sorted(old.status.keys() | new.status.keys()):
            before = (
                old.status[tenant].versions.get(SURFACE_DEFAULT) if tenant in old.status else None
            )
            status = new.status.get(tenant)
            after = status.versions.get(SURFACE_DEFAULT) if status is not None else None
            if before is not None and before != after:
                self._metrics.set("moderator_policy_info", 0, tenant=tenant, version=before)
            if after is not None:
                self._metrics.set("moderator_policy_info", 1, tenant=tenant, version=after)
            stale = status is not None and status.stale
            self._metrics.set("moderator_policy_stale", 1 if stale else 0, tenant=tenant)

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_interval_s):
            try:
                self.reload()
            except Exception:  # the last good snapshot stays; never kill the poller
                log.exception("policy_reload_failed")

    def _build(self, old: _Snapshot, *, initial: bool) -> _Snapshot:
        errors: list[str] = []
        blame: dict[str, str] = {}  # error -> the tenant it is about
        files: dict[str, _File] = {}
        try:
            paths, duplicates = policy_paths(self._dir)
        except ConfigError as exc:  # the directory itself is gone or unreadable
            if initial:
                raise
            return dataclasses.replace(old, errors=(str(exc),))
        failed: dict[str, str] = {error.path.stem: str(error) for error in duplicates}
        if DEFAULT not in paths:  # a broken base like any other: its last good content stays
            failed[DEFAULT] = f"{self._dir / 'default.yaml'}: missing (every directory needs one)"
        for stem, path in paths.items():
            if stem in failed:
                continue
            try:
                data = read_policy(path)
            except PolicyError as exc:
                failed[stem] = str(exc)
                continue
            fingerprint = hashlib.sha256(data).hexdigest()
            previous = old.files.get(stem)
            if previous is not None and previous.fingerprint == fingerprint:
                files[stem] = previous
                continue
            try:
                text = data.decode("utf-8")
                files[stem] = _File(fingerprint, load_text(text, path))
            except UnicodeDecodeError:
                failed[stem] = f"{path}: not UTF-8 text"
            except PolicyError as exc:
                failed[stem] = str(exc)
        for stem, reason in failed.items():
            errors.append(reason)
            blame[reason] = stem
            if stem in old.files:  # the last good content stays in force
                files[stem] = old.files[stem]
        unchanged = files.keys() == old.files.keys() and all(
            files[stem] is old.files[stem] for stem in files
        )
        if unchanged and not errors and not old.errors and not initial:
            return old  # the common poll: nothing to compile, nothing to swap
        policies: dict[tuple[str, str], TenantPolicy] = {}
        status: dict[str, TenantStatus] = {}
        now = datetime.now(UTC)
        docs = {stem: f.policy for stem, f in files.items()}
        for tenant in sorted(files):
            # Compiling over the last good content of a failing file would apply a policy the
            # same directory cannot start with: the tenant waits for its whole chain instead.
            culprit = broken_link(docs, failed, tenant)
            if culprit is not None:
                _hold(old, tenant, failed[culprit], now, policies, status)
                continue
            compiled, error = self._compile_tenant(docs, paths, tenant)
            if compiled is None:
                errors.append(error or f"{tenant}: cannot compile")
                blame[errors[-1]] = tenant
                _hold(old, tenant, error, now, policies, status)
                continue
            policies.update({(tenant, s): p for s, p in compiled.items()})
            before = old.status.get(tenant)
            versions = {s: p.version for s, p in compiled.items()}
            unchanged = before is not None and dict(before.versions) == versions
            status[tenant] = TenantStatus(
                versions=versions,
                loaded_at=before.loaded_at if unchanged and before else now,
                stale=False,
                error=None,
            )
        for stem in failed.keys() - files.keys():  # a new file, broken: nothing in force
            status[stem] = TenantStatus(versions={}, loaded_at=now, stale=True, error=failed[stem])
        return _Snapshot(files, paths, policies, status, tuple(dict.fromkeys(errors)), blame)

    def _compile_tenant(
        self, docs: Mapping[str, PolicyFile], paths: Mapping[str, Path], tenant: str
    ) -> tuple[dict[str, TenantPolicy] | None, str | None]:
        # compile_tenant remembers what it compiled: the directory check made before start-up
        # has compiled these files already, and a reload recompiles only what an edit changed.
        try:
            return compile_tenant(docs, tenant, self._tenancy, sources=paths), None
        except ConfigError as exc:
            return None, str(exc)

    def _unknown(self, snap: _Snapshot, tenant_id: str, surface: str) -> TenantPolicy:
        """The default policy compiled for a tenant without a file (operator opt-in)."""
        key = (tenant_id, surface)
        with self._unknown_lock:
            cached = snap.unknown.get(key)
            if cached is not None:
                snap.unknown.move_to_end(key)
                return cached
        docs = {stem: f.policy for stem, f in snap.files.items()}
        docs[tenant_id] = PolicyFile()
        policy = compile_policy(
            resolve(docs, tenant_id, surface, self._tenancy, sources=snap.paths)
        )
        with self._unknown_lock:
            snap.unknown[key] = policy
            while len(snap.unknown) > UNKNOWN_TENANT_CACHE:
                snap.unknown.popitem(last=False)
        return policy


def _hold(
    old: _Snapshot,
    tenant: str,
    error: str | None,
    now: datetime,
    policies: dict[tuple[str, str], TenantPolicy],
    status: dict[str, TenantStatus],
) -> None:
    """Keep the tenant's last good compiled policies (none for a new tenant), marked stale."""
    kept = {k: v for k, v in old.policies.items() if k[0] == tenant}
    policies.update(kept)
    previous = old.status.get(tenant)
    status[tenant] = TenantStatus(
        versions={s: p.version for (_, s), p in kept.items()},
        loaded_at=previous.loaded_at if previous else now,
        stale=True,
        error=error,
    )


def _in_force(status: TenantStatus | None) -> str | None:
    """The default-surface version in force for a tenant, if any."""
    return status.versions.get(SURFACE_DEFAULT) if status is not None else None


def _log_problems(old: _Snapshot, new: _Snapshot) -> None:
    """One line per file that newly fails (with what stays in force and whom else it holds
    back), per tenant whose edit waits for another file, and per tenant no longer stale."""
    for error in new.errors:
        if error in old.errors:
            continue
        culprit = new.blame.get(error)
        held = new.status.get(culprit) if culprit is not None else None
        others = sorted(t for t, s in new.status.items() if s.error == error and t != culprit)
        extra = {"also_stale": others} if others else {}
        log.error(
            "policy_invalid",
            error=error,
            tenant=culprit,
            last_good_in_force=held is not None and bool(held.versions),
            in_force=_in_force(held),
            **extra,
        )
    for tenant, status in sorted(new.status.items()):
        edited = new.files.get(tenant) is not old.files.get(tenant)
        if edited and status.stale and new.blame.get(status.error or "") != tenant:
            # A valid edit that is not applied yet: without this line it would look lost.
            log.warning(
                "policy_held_back", tenant=tenant, by=status.error, in_force=_in_force(status)
            )
    for tenant, before in sorted(old.status.items()):
        after = new.status.get(tenant)
        if after is None and before.versions:  # its file is gone: its uploads are unknown now
            log.warning("policy_removed", tenant=tenant, was_in_force=_in_force(before))
        elif before.stale and (after is None or not after.stale):
            log.info("policy_valid_again", tenant=tenant, in_force=_in_force(after))


def _changes(old: _Snapshot, new: _Snapshot) -> list[tuple[str, str, str | None, str | None]]:
    keys = set(old.policies) | set(new.policies)
    out = []
    for tenant, surface in sorted(keys):
        before = old.policies.get((tenant, surface))
        after = new.policies.get((tenant, surface))
        b = before.version if before else None
        a = after.version if after else None
        if a != b:
            out.append((tenant, surface, b, a))
    return out


def _log_overlaps(old: _Snapshot, new: _Snapshot) -> None:
    """A warning for each pair of tenants whose allowed locations came to overlap (at start-up:
    each that does), as `policy validate` warns (moderator.policy.overlap)."""
    from moderator.policy.overlap import overlaps

    before = set(overlaps(old.policies)) if old.policies else set()
    for line in overlaps(new.policies):
        if line not in before:
            log.warning("policy_locations_overlap", detail=line)
