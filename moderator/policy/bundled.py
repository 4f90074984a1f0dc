"""Policies shipped inside the package: the demo's, whose default.yaml is policies/default.yaml."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def bundled_default() -> bytes:
    """The shipped default.yaml: the nine categories' guidelines and state texts."""
    return files("moderator").joinpath("data", "demo-policies", "default.yaml").read_bytes()


def write_default_policy(directory: Path) -> Path:
    """Write the shipped default.yaml into `directory` (created if needed); return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "default.yaml"
    path.write_bytes(bundled_default())
    return path
