"""JSON Schemas of the records on the service's topics, for the platforms that write and read them.

Generated from the models (pure): `docs/schemas/` holds them as released, and a test keeps the
files equal to what this module writes. Regenerate after a model change:

    .venv/bin/python -m moderator.events.schemas docs/schemas

The input schema (UploadEvent) is what the service accepts; its checks go further than a schema
can say (I-JSON limits, nesting depth, the context's size: docs/architecture.md). The output
schemas (Verdict, AuditRecord) describe what the service writes: every property is always
present (null where it has no value), and a reader should ignore properties it does not know,
since a v1 record may gain one (as `error` and `replay` were added).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from moderator.events.upload import UploadEvent
from moderator.events.verdict import AuditRecord, Verdict

BASE_ID = "https://moderator.invalid/schemas/"
"""Where the `$id`s point: a name, not a place to fetch from."""

SCHEMAS: dict[str, tuple[type[BaseModel], Literal["validation", "serialization"], str]] = {
    "upload-event.v1.json": (UploadEvent, "validation", "an upload event on `uploads`"),
    "verdict.v1.json": (Verdict, "serialization", "a verdict on `moderation.verdicts`"),
    "audit-record.v1.json": (AuditRecord, "serialization", "an audit record on `moderation.audit`"),
}


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the file `name` in SCHEMAS."""
    model, mode, what = SCHEMAS[name]
    found = model.model_json_schema(by_alias=True, mode=mode)
    if mode == "serialization":
        _as_written(found)
        for definition in found.get("$defs", {}).values():
            _as_written(definition)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": BASE_ID + name,
        "description": f"JSON of {what} (moderator.events.schemas).",
        **{k: v for k, v in found.items() if k != "description"},
    }


def render(name: str) -> str:
    """The file's text: the schema as indented JSON, one trailing newline."""
    return json.dumps(schema(name), indent=2, ensure_ascii=False) + "\n"


def write(directory: Path) -> list[Path]:
    """Write every schema into `directory` (made if need be); the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SCHEMAS:
        path = directory / name
        path.write_text(render(name), encoding="utf-8")
        written.append(path)
    return written


def _as_written(node: dict[str, Any]) -> None:
    """An output object as the service writes it: every property present, others allowed."""
    properties = node.get("properties")
    if properties is None:
        return
    node["required"] = list(properties)
    node.pop("additionalProperties", None)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m moderator.events.schemas DIRECTORY", file=sys.stderr)
        return 2
    for path in write(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
