"""The GPU suite: tests that need a CUDA device (`pytest -m gpu tests/gpu`, docs/gpu.md)."""
