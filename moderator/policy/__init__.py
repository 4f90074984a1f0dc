"""Tenant policies: what the model is asked and how its answer becomes a decision."""
