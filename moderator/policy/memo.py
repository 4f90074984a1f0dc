"""Compiled tenant policies remembered by what decides them, so a process compiles each once.

A command checks its policy directory before it builds the provider that serves it (`run`,
`replay`, `demo`), and `replay` compares the directory again for its report: without this each
pass would compile every tenant anew from the same files. A hot reload that changes one file
also recompiles only the tenants whose chain reads it.

The key is everything `resolve` reads for one tenant: its id, the tenancy rule and buckets,
and each file of its `extends` chain as written, values and which keys are present (a key
written as `null` overrides an inherited value, so two files that compare equal may still
resolve differently). Paths are left out: they only name files in error messages, and a
compile that fails is never remembered. Pure apart from the table itself, which is
thread-safe and bounded (least recently used goes first).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping

from moderator.policy.compiled import TenantPolicy
from moderator.policy.document import PolicyFile
from moderator.policy.load import PolicyError
from moderator.policy.resolve import Tenancy, chain_of

# Tenants remembered; beyond a deployment's own tenants this only holds what a reload
# replaced or a comparison read, which is cheap to compile again.
MAX_TENANTS = 4096

Compiled = dict[str, TenantPolicy]  # surface -> policy


def written(policy: PolicyFile) -> bytes:
    """A digest of the file as written: the keys it sets, nested ones included, and their
    values (unset keys are left out, so a key set to its default still counts)."""
    return hashlib.sha256(policy.model_dump_json(exclude_unset=True).encode("utf-8")).digest()


def tenancy_key(tenancy: Tenancy) -> Hashable:
    """The tenancy settings as far as resolve reads them (default locations)."""
    return (tenancy.rule, tuple(sorted(tenancy.bucket_map.items())), tuple(tenancy.upload_buckets))


def tenant_key(files: Mapping[str, PolicyFile], tenant: str, tenancy: Tenancy) -> Hashable | None:
    """What decides `tenant`'s compiled policies; None when its chain cannot be followed (the
    compile then fails with its own error, which is not remembered)."""
    try:
        chain = chain_of(files, tenant)
    except PolicyError:
        return None
    layers = tuple((name, written(files[name])) for name in chain)
    return tenant, tenancy_key(tenancy), layers


class CompileMemo:
    """Compiled policies by tenant key, for at most `size` tenants."""

    def __init__(self, size: int = MAX_TENANTS) -> None:
        self._size = size
        self._table: OrderedDict[Hashable, Compiled] = OrderedDict()
        self._lock = threading.Lock()

    def compiled(
        self,
        files: Mapping[str, PolicyFile],
        tenant: str,
        tenancy: Tenancy,
        build: Callable[[], Compiled],
    ) -> Compiled:
        """The remembered policies of `tenant` for these files, else `build()`'s (kept when
        it returns). Two threads missing at once both compile: same input, same result."""
        key = tenant_key(files, tenant, tenancy)
        if key is None:
            return build()
        with self._lock:
            found = self._table.get(key)
            if found is not None:
                self._table.move_to_end(key)
                return dict(found)  # a copy: callers may add to what they get
        result = build()
        with self._lock:
            self._table[key] = dict(result)
            while len(self._table) > self._size:
                self._table.popitem(last=False)
        return result


COMPILED = CompileMemo()
"""The process's memo, shared by every directory check and policy registry."""
