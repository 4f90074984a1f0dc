"""The audit sink: `moderation.audit` into the audit store, and its wiring."""
