"""`engine.kind: openai`: guard models behind any OpenAI-compatible server."""
