"""Reading the audit trail: queries, filters, row shapes and the read-only HTTP API."""
