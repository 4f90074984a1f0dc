"""Holding the audit trail to account: chain verification and exported chain-head anchors."""
