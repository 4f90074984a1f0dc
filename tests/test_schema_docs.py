"""docs/architecture.md names every field the records carry, as the models spell them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from moderator.events.upload import ObjectRef, UploadEvent
from moderator.events.verdict import (
    Assessment,
    AuditRecord,
    InputCoords,
    ModelInfo,
    PolicyRef,
    Timings,
    Verdict,
    VerdictObject,
)

ARCHITECTURE = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def _paragraph(title: str) -> str:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    start = text.index(f"**{title}**")
    return text[start : text.index("\n\n", start)]


def _names(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


@pytest.mark.parametrize(
    ("title", "models"),
    [
        ("UploadEvent v1", [UploadEvent, ObjectRef]),
        ("Verdict v1", [Verdict, VerdictObject, Assessment, PolicyRef, ModelInfo, Timings]),
        ("AuditRecord v1", [AuditRecord, InputCoords]),
    ],
)
def test_every_field_is_named_as_the_records_spell_it(
    title: str, models: list[type[BaseModel]]
) -> None:
    named = set(re.findall(r"`([a-z0-9_]+)`", _paragraph(title)))
    missing = {m.__name__: [f for f in _names(m) if f not in named] for m in models}
    assert {k: v for k, v in missing.items() if v} == {}
