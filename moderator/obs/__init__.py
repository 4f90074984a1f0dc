"""Observability: metrics, traces, health and the HTTP endpoint that serves them."""
