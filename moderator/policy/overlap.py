"""Tenants whose allowed locations overlap: one tenant's events could fetch another's objects.

Each tenant's policy says which objects its events may name (`allowed`, or by default its
`{tenant}/` prefix of the upload buckets, or its buckets under `bucket_map`). A file that widens
that to another tenant's prefix is valid YAML and a valid policy, and the service would fetch
and judge the other tenant's uploads for it. `policy validate` warns about each such pair
(moderator/cli/policy.py); whether the sharing is meant is for whoever writes the files. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping

from moderator.policy.compiled import TenantPolicy
from moderator.policy.resolve import ROOT

SURFACE_DEFAULT = "default"


def overlaps(policies: Mapping[tuple[str, str], TenantPolicy]) -> list[str]:
    """One line per pair of tenants whose allowed locations share objects, naming a place both
    may read (`s3://bucket/prefix`), in name order. Sorted prefixes, not every pair of tenants:
    a directory of thousands of tenants is checked at each reload."""
    places: dict[str, list[tuple[str, str]]] = {}  # bucket -> (prefix, tenant)
    for (tenant, surface), policy in policies.items():
        if surface != SURFACE_DEFAULT or tenant == ROOT:
            continue
        for bucket in policy.resolved.buckets:
            for prefix in policy.resolved.prefixes or ("",):  # none: the whole bucket
                places.setdefault(bucket, []).append((prefix, tenant))
    shared: dict[tuple[str, str], str] = {}
    for bucket in sorted(places):
        open_prefixes: list[tuple[str, str]] = []  # each a prefix of the next, in order
        for prefix, tenant in sorted(places[bucket]):
            while open_prefixes and not prefix.startswith(open_prefixes[-1][0]):
                open_prefixes.pop()
            for _, other in open_prefixes:
                if other != tenant:
                    shared.setdefault(
                        (min(tenant, other), max(tenant, other)), f"{bucket}/{prefix}"
                    )
            open_prefixes.append((prefix, tenant))
    return [
        f"tenants {a} and {b} may both read s3://{place}: either's events may name the other's "
        "uploads (their allowed locations overlap)"
        for (a, b), place in sorted(shared.items())
    ]
