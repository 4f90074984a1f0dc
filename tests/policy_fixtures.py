"""Policy files for the policy tests: a complete default and helpers to build directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moderator.policy.document import CODES, PolicyFile
from moderator.policy.load import load_text
from moderator.policy.model import ResolvedPolicy
from moderator.settings import TenancySettings

KEY_PREFIX = TenancySettings(upload_buckets=("uploads", "media"))
BUCKET_MAP = TenancySettings(
    rule="bucket_map", bucket_map={"acme-b": "acme", "acme-a": "acme", "other": "kids"}
)


def default_yaml() -> str:
    """A test default.yaml: every category with texts for its three states."""
    lines = ["description: test default", "owner: tests", "categories:"]
    for code in CODES:
        lines += [
            f"  {code}:",
            "    should_not:",
            f"      - show {code} material",
            "    can:",
            f"      - discuss {code} in general",
            f"    allowed_text: {code} content is fine here without limits.",
            f"    sensitive_text: {code} content is never acceptable.",
        ]
    return "\n".join(lines) + "\n"


def write_sample_policies(folder: Path) -> Path:
    """default.yaml, `acme` (O4 allowed, sensitive on its profile_photo surface) and `kids`
    (errors blocked) in `folder`."""
    (folder / "default.yaml").write_text(default_yaml())
    (folder / "acme.yaml").write_text(
        "categories:\n  O4: {mode: allowed}\nsurfaces:\n  profile_photo:\n"
        "    categories:\n      O4: {mode: sensitive, block_at: 0.5}\n"
    )
    (folder / "kids.yaml").write_text("on_error: block\n")
    return folder


def parse(text: str, name: str = "t") -> PolicyFile:
    return load_text(text, Path(f"{name}.yaml"))


def directory(**tenants: str) -> dict[str, PolicyFile]:
    """stem -> parsed file; `default` is the test default unless given. An empty text stands
    for `{}`, a tenant that keeps every inherited value (an empty file is an error)."""
    files = {"default": parse(default_yaml(), "default")}
    files.update({name: parse(text or "{}", name) for name, text in tenants.items()})
    return files


def clear_moderator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove MODERATOR_* variables, so settings come from the test's files and flags only."""
    for name in list(os.environ):
        if name.startswith("MODERATOR_") and name != "MODERATOR_HTTP__PORT":
            monkeypatch.delenv(name)


def count_compiles(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(tenant, surface) of every policy compiled from now on, whoever compiles it, with an
    empty memo in place of the process's (what another test compiled is not remembered)."""
    from moderator.policy import check, compiled, memo
    from moderator.policy.prompt import render_prompt as render

    monkeypatch.setattr(check, "COMPILED", memo.CompileMemo())
    seen: list[tuple[str, str]] = []

    def counted(resolved: ResolvedPolicy) -> str:
        seen.append((resolved.tenant_id, resolved.surface))
        return render(resolved)

    monkeypatch.setattr(compiled, "render_prompt", counted)
    return seen
