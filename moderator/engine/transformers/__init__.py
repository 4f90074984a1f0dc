"""`engine.kind: transformers`: guard models in-process with Hugging Face transformers."""
