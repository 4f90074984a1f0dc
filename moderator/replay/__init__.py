"""`moderator replay`: judge past uploads again under other policies or another model, and report.

The runner reads a range of `uploads` and produces each event's original and replayed verdicts;
the report side is pure and file-only: `compare` pairs the two verdicts, `report` counts the
pairs, `tables` lays the counts out once for `markdown` and `html` (with `charts`), and `render`
writes report.json, changed.jsonl, report.md and report.html.
"""
