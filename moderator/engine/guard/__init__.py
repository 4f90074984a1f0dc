"""What every guard-model engine shares: prompts, the verdict schema, output parsing, scores."""
