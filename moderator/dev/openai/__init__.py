"""A small OpenAI-compatible chat completions server for tests and local work."""
