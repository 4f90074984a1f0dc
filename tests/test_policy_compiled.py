"""The compiled policy: prompt, category enum, locations, decisions and a deterministic version."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moderator.errors import ErrorCode
from moderator.events.verdict import CATEGORIES, Assessment
from moderator.policy.compiled import HASH_SCHEMA, TenantPolicy, compile_policy
from moderator.policy.decide import decision_table_json
from moderator.policy.prompt import render_prompt
from moderator.policy.resolve import resolve
from tests.policy_fixtures import BUCKET_MAP, KEY_PREFIX, default_yaml, directory

ROOT = Path(__file__).resolve().parents[1]
MUSEUM = (
    "description: a museum\nowner: curators\n"
    "categories: {O4: {mode: allowed}, O2: {block_at: 0.9, review_at: 0.6}}\n"
    "surfaces:\n  profile_photo:\n    categories: {O4: {mode: sensitive}}\n"
    "  chat: {}\n"
    "on_error: {default: block}\n"
)


def compiled(surface: str = "default", **tenants: str) -> TenantPolicy:
    files = directory(**(tenants or {"museum": MUSEUM}))
    return compile_policy(resolve(files, "museum", surface, KEY_PREFIX))


def test_compiled_parts() -> None:
    policy = compiled()
    assert policy.tenant_id == "museum" and policy.surface == "default"
    assert policy.prompt == render_prompt(policy.resolved)
    assert policy.prompt_sha256 == hashlib.sha256(policy.prompt.encode()).hexdigest()
    assert len(policy.full_hash) == 64 and policy.version == policy.full_hash[:16]
    assert int(policy.full_hash, 16) >= 0


def test_the_category_enum_always_keeps_all_ten() -> None:
    every_mode = "categories: {" + ", ".join(f"O{i}: {{mode: allowed}}" for i in range(1, 10))
    policy = compiled(museum=every_mode + "}\n")
    assert policy.categories == CATEGORIES
    assert compiled().categories == CATEGORIES


def test_the_full_hash_is_the_documented_canonical_json() -> None:
    policy = compiled("profile_photo")
    doc = {
        "schema": HASH_SCHEMA,
        "tenant_id": "museum",
        "prompt": policy.prompt,
        "decision_table": decision_table_json(policy.resolved),
        "buckets": ["uploads", "media"][::-1],
        "prefixes": ["museum/"],
    }
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert policy.full_hash == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert policy.hash_document() == doc


def test_with_surface_relabels_without_changing_the_version() -> None:
    plain = compiled("chat")  # declared, but overrides nothing
    assert plain.surface == "chat"
    unknown = compiled("banner")
    assert unknown.surface == "default"
    assert unknown.version == plain.version  # the same rules, the same cache entries
    relabelled = unknown.with_surface("banner")
    assert relabelled.surface == "banner" and unknown.surface == "default"
    assert (relabelled.version, relabelled.full_hash) == (unknown.version, unknown.full_hash)
    assert relabelled.resolved is unknown.resolved and relabelled.prompt == unknown.prompt


def test_the_version_covers_decisions_prompt_and_locations() -> None:
    base = compiled()
    variants = {
        "surface override": compiled("profile_photo"),
        "mode": compiled(museum=MUSEUM.replace("mode: allowed}", "mode: default}")),
        "threshold": compiled(museum=MUSEUM.replace("0.9", "0.95")),
        "on_error": compiled(museum=MUSEUM.replace("default: block", "default: review")),
        "text": compiled(default=default_yaml().replace("show O5", "depict O5"), museum=MUSEUM),
        "buckets": compiled(museum=MUSEUM + "allowed: {buckets: [art]}\n"),
        "prefixes": compiled(museum=MUSEUM + "allowed: {prefixes: [m/]}\n"),
        "tenant": compile_policy(dataclasses.replace(base.resolved, tenant_id="gallery")),
    }
    versions = {name: policy.version for name, policy in variants.items()}
    assert base.version not in versions.values()
    assert len(set(versions.values())) == len(versions)


def test_the_version_ignores_labels_chain_and_metadata() -> None:
    base = compiled()
    same = [
        compiled(museum=MUSEUM.replace("a museum", "a gallery").replace("curators", "x")),
        compiled(museum=MUSEUM + "dsa: {categories: {O4: STATEMENT_CATEGORY_VIOLENCE}}\n"),
        compiled(museum=MUSEUM.replace("{default: block}", "block")),
        compile_policy(dataclasses.replace(base.resolved, chain=("museum", "arts", "default"))),
        compile_policy(dataclasses.replace(base.resolved, surface="elsewhere")),
    ]
    assert {policy.version for policy in same} == {base.version}


@pytest.mark.parametrize(
    ("bucket", "key", "allowed"),
    [
        ("uploads", "museum/a.jpg", True),
        ("media", "museum/x/y.png", True),
        ("uploads", "acme/a.jpg", False),
        ("uploads", "museumx/a.jpg", False),
        ("elsewhere", "museum/a.jpg", False),
        ("uploads", "museum/../acme/a.jpg", False),
        ("uploads", "/museum/a.jpg", False),
        ("uploads", "museum/a\x00.jpg", False),
        ("uploads", "museum/a\n.jpg", False),
    ],
)
def test_allows_object_with_the_key_prefix_rule(bucket: str, key: str, allowed: bool) -> None:
    assert compiled().allows_object(bucket, key) is allowed


def test_allows_object_with_a_bucket_map_and_open_prefixes() -> None:
    acme = compile_policy(resolve(directory(), "acme", "default", BUCKET_MAP))
    assert acme.allows_object("acme-a", "any/key.jpg")
    assert acme.allows_object("acme-b", "x.jpg")
    assert not acme.allows_object("other", "x.jpg")
    assert not acme.allows_object("acme-a", "../x.jpg")
    nobody = compile_policy(resolve(directory(), "nobody", "default", BUCKET_MAP))
    assert not nobody.allows_object("acme-a", "x.jpg")


def test_decisions_delegate_to_the_table() -> None:
    policy = compiled()
    o4 = Assessment(rating="Unsafe", category=CATEGORIES[3])
    assert policy.decide(o4) == "allow"  # allowed mode, default action
    assert compiled("profile_photo").decide(o4) == "block"
    o2 = Assessment(rating="Safe", category=CATEGORIES[1], score=0.7)
    assert policy.decide(o2) == "review"
    assert policy.on_error(ErrorCode.ENGINE_TIMEOUT) == "block"
    assert policy.on_error(ErrorCode.TENANT_MISMATCH) == "block"


_SNIPPET = """
from moderator.policy.compiled import compile_policy
from moderator.policy.resolve import resolve
from tests.policy_fixtures import KEY_PREFIX, directory
from tests.test_policy_compiled import MUSEUM
files = directory(museum=MUSEUM)
for surface in ("default", "profile_photo"):
    policy = compile_policy(resolve(files, "museum", surface, KEY_PREFIX))
    print(policy.full_hash, policy.prompt_sha256)
"""


def test_compilation_is_deterministic_across_processes() -> None:
    outputs = set()
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", _SNIPPET],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        outputs.add(done.stdout)
    here = "".join(
        f"{p.full_hash} {p.prompt_sha256}\n" for p in (compiled(), compiled("profile_photo"))
    )
    assert outputs == {here}


def test_the_policy_core_imports_no_adapters() -> None:
    code = (
        "import sys\n"
        "import moderator.policy.compiled, moderator.policy.resolve, moderator.policy.load\n"
        "heavy = ('confluent_kafka', 'boto3', 'botocore', 'torch', 'structlog', 'moderator.logs')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == "[]"
