"""The audit hash chain's definitions: canonical JSON (RFC 8785) and the row hashes. Pure."""
