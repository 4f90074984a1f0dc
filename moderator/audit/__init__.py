"""The audit trail: the SQL audit store (SQLite or PostgreSQL), its per-partition hash chains,
exported chain-head anchors, verification and retention (docs/audit.md).

Pure parts: `canonical` (hash definitions), `fields` (indexed columns), `models` (data types),
`verify.check_chain`. I/O: `store`, `migrations`, `anchors`, `retention`.
"""
