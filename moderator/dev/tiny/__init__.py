"""Tiny random-weight checkpoints of the guard-model architectures, for smoke tests."""
